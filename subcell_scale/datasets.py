"""Demo data to try everything on in minutes: generated plates with a platemap, and their embedded cells.

The plates look like HPA confocal fields (4 channels) or JUMP Cell Painting fields (5 channels), with
compounds, mechanisms of action and negative controls laid out like a screen
(:func:`subcell_scale.io.make_demo_plate`). Each function writes into ``path`` once and reads what is
there on later calls with the same arguments, as scanpy's datasets do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._constants import Files

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["TINY_MODEL", "DemoPlates", "demo_cells", "demo_plates"]

_RECORD = "demo.json"

TINY_MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128, "num_channels": 4,
              "pool_int_dim": 32}
"""Architecture of the random model :func:`demo_cells` embeds with: small enough for seconds on a laptop."""


@dataclass(frozen=True)
class DemoPlates:
    """Demo plates on disk: the plate paths and the platemap that annotates their wells."""

    plates: list[Path]
    platemap: Path


def demo_plates(path: str | os.PathLike[str], *, n_plates: int = 2, n_wells: int = 24, n_fields: int = 1,
                cellpainting: bool = False, seed: int = 0, **options: Any) -> DemoPlates:
    """Generated plates and their platemap in ``path`` (written on the first call, reused afterwards).

    Parameters
    ----------
    path
        Folder for ``<plate>.zarr`` and ``platemap.csv``.
    n_plates, n_wells, n_fields, cellpainting, seed, **options
        As :func:`subcell_scale.io.make_demo_plate` (``field_size``, ``cells_per_field``, ...).
    """
    from .io.demo import make_demo_plate

    folder = Path(path)
    wanted = {"n_plates": n_plates, "n_wells": n_wells, "n_fields": n_fields, "cellpainting": cellpainting,
              "seed": seed, **options}
    record = folder / _RECORD
    if record.exists() and json.loads(record.read_text()).get("options") == wanted:
        plates = [folder / p for p in json.loads(record.read_text())["plates"]]
        if all(p.exists() for p in plates) and (folder / Files.PLATEMAP).exists():
            return DemoPlates(plates, folder / Files.PLATEMAP)
    plates = [Path(p) for p in make_demo_plate(folder, **wanted)]
    record.write_text(json.dumps({"options": wanted, "plates": [p.name for p in plates]}, indent=1))
    return DemoPlates(plates, folder / Files.PLATEMAP)


def demo_cells(path: str | os.PathLike[str], *, n_plates: int = 2, n_wells: int = 12, seed: int = 0,
               out_size: int = 64) -> AnnData:
    """The cells AnnData of demo plates embedded with a small random model, in this process.

    For trying :mod:`subcell_scale.tl`, :mod:`subcell_scale.pl`, :mod:`subcell_scale.profiles` and
    :mod:`subcell_scale.metrics` without a cluster or weights: the embeddings come from deterministic
    random weights, so they show the pipeline, not biology. The run directory is ``path/run`` (a
    second call reads it back).
    """
    from .models import ModelSpec
    from .workflow import embed_plate

    data = demo_plates(Path(path) / Files.PLATES, n_plates=n_plates, n_wells=n_wells, seed=seed)
    spec = ModelSpec("random", config=TINY_MODEL, seed=seed, n_classifiers=1)
    return embed_plate(data.plates, spec, out=Path(path) / "run", platemap=data.platemap, out_size=out_size,
                       progress=False)
