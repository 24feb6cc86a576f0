"""A user's torch model as another view of every cell, embedded in the same pass as SubCell.

To compare SubCell with a model of their own (DINO, a CellProfiler-trained network, a baseline), a
user hands a run a :class:`ModelView`: the model (a ``torch.nn.Module`` or a TorchScript file), the
plate channels it reads in its input order, its crop (side in pixels, window in micrometres, mask,
min-max normalisation and an optional per-channel mean / std after it). Each kept cell is cropped
for it as SubCell's crops are cut (:func:`subcell_scale.cells.extract_cells`) and embedded on the
worker's CPU threads in the prepare stage; its outputs land in ``obsm[name]`` (columns
``<name>_0000`` ...) and go through the same profiles and evaluation as every view
(:mod:`subcell_scale.views`). SubCell stays ``X``.

The model reaches workers as a file, never inside the task graph: a module is compiled to
TorchScript (scripted, else traced on one crop) and saved, like a TorchScript file given by path,
into the run directory (``views/<name>-<sha256>.pt``), whose sha256 joins the run's parameters (resume).

Example
-------
>>> view = ModelView("mine", my_module, channels=["DNA", "ER", "RNA"], size=224, crop_um=60.0,
...                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # doctest: +SKIP
>>> cells = ss.embed_plate(plate, out="run", views=[view])  # doctest: +SKIP
>>> cells.obsm["mine"]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import ChannelMismatchError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .cells import CropSpec
    from .rundir import RunPath

__all__ = ["ModelView", "ViewPlan", "embed_view", "prepare_views"]

VIEWS_FOLDER = "views"
"""Folder of the run directory (or scratch) holding each model view's TorchScript file."""


@dataclass(frozen=True)
class ModelView:
    """A user's model, its channels, crop and normalisation.

    Attributes
    ----------
    name
        The ``obsm`` key of its embeddings and its name in tables (not ``"X"``, ``"subcell"`` or a
        key the run writes itself).
    model
        A ``torch.nn.Module`` taking float32 (B, C, size, size) and returning (B, D), or the path of
        a TorchScript file of such a module.
    channels
        Plate channel names in the model's input order.
    size
        Side of the model's input in pixels.
    crop_um
        Side of the window around each cell in micrometres; None: the run's SubCell window.
    mask_mode, normalization
        As in :class:`~subcell_scale.cells.CropSpec`: ``"none"`` or ``"own_cell"`` (other cells
        masked); ``"global"``, ``"per_channel"`` or ``"none"`` min-max.
    mean, std
        Per-channel values subtracted and divided after the min-max (ImageNet statistics for an
        ImageNet model); None: none.
    batch_size
        Crops per forward call.
    """

    name: str
    model: Any = field(compare=False, repr=False)
    channels: Sequence[str] = ()
    size: int = 224
    crop_um: float | None = None
    mask_mode: str = "none"
    normalization: str = "per_channel"
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    batch_size: int = 64


@dataclass(frozen=True)
class ViewPlan:
    """A model view as workers see it: the TorchScript file, its sha256 and the crop, all picklable."""

    name: str
    path: RunPath
    sha256: str
    crop: CropSpec
    channels: tuple[str, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    batch_size: int

    def describe(self) -> dict[str, Any]:
        """Plain JSON: what changes the view's embeddings (the run's digest, ``uns["views"]``)."""
        return {"kind": "model", "sha256": self.sha256, "channels": list(self.channels), "size": self.crop.size,
                "crop_um": self.crop.side_um, "mask_mode": self.crop.mask_mode,
                "normalization": self.crop.normalization, "mean": list(self.mean or ()), "std": list(self.std or ())}

    def channel_indices(self, plate_channels: Sequence[str]) -> tuple[int, ...]:
        """The plate's indices of the view's channels (matched without case).

        Raises
        ------
        ChannelMismatchError
            A channel the plate lacks, named with the plate's channels.
        """
        lowered = [str(c).lower() for c in plate_channels]
        missing = [c for c in self.channels if c.lower() not in lowered]
        if missing:
            msg = f"view {self.name!r} needs channel(s) {missing}; the plate has {list(plate_channels)}"
            raise ChannelMismatchError(msg)
        return tuple(lowered.index(c.lower()) for c in self.channels)


_RESERVED = ("X", "subcell", "spatial", "localization", "cellprofiler")


def prepare_views(views: Sequence[ModelView], folder: RunPath, side_um: float) -> tuple[ViewPlan, ...]:
    """Check each view and save its model as TorchScript into ``folder`` (``views/`` of the run).

    ``side_um`` is the run's SubCell window, the default of ``crop_um``.

    Raises
    ------
    ConfigError
        A view that is not a :class:`ModelView`, a reserved or repeated name, no channels, mean or
        std of the wrong length, a model that is neither a module nor a TorchScript file, or one that
        cannot be compiled.
    """
    from .cells import CropSpec

    plans, names = [], set()
    for view in views:
        if not isinstance(view, ModelView):
            raise ConfigError(f"views: expected ModelView objects, got {type(view).__name__}")
        if not view.name or view.name in _RESERVED or view.name in names or "+" in view.name:
            raise ConfigError(f"views: name {view.name!r} is empty, repeated, has '+' or is reserved {_RESERVED}")
        names.add(view.name)
        channels = tuple(str(c) for c in view.channels)
        if not channels:
            raise ConfigError(f"view {view.name!r}: give the plate channels the model reads, in its input order")
        for what, values in (("mean", view.mean), ("std", view.std)):
            if values is not None and len(values) != len(channels):
                raise ConfigError(f"view {view.name!r}: {what} has {len(values)} values for {len(channels)} channels")
        side = float(view.crop_um or side_um)
        crop = CropSpec(crop_um=side, model_pixel_size=side / int(view.size), out_size=int(view.size),
                        mask_mode=view.mask_mode, normalization=view.normalization)
        data = _torchscript_bytes(view, len(channels))
        sha256 = hashlib.sha256(data).hexdigest()
        path = folder / f"{view.name}-{sha256[:12]}.pt"  # by content: a refused run replaces no run's file
        if not path.exists():
            path.write_bytes(data)
        plans.append(ViewPlan(view.name, path, sha256, crop, channels,
                              None if view.mean is None else tuple(float(v) for v in view.mean),
                              None if view.std is None else tuple(float(v) for v in view.std), int(view.batch_size)))
    return tuple(plans)


def _torchscript_bytes(view: ModelView, n_channels: int) -> bytes:
    """The view's model as TorchScript bytes: a file as it is, a module scripted (else traced on one crop)."""
    import torch

    if isinstance(view.model, str | os.PathLike):
        with open(view.model, "rb") as fh:
            return fh.read()
    if not isinstance(view.model, torch.nn.Module):
        raise ConfigError(f"view {view.name!r}: model must be a torch.nn.Module or a TorchScript file path")
    module = view.model.eval()
    try:
        compiled = torch.jit.script(module)
    except Exception:  # noqa: BLE001 - many modules cannot be scripted; tracing on one crop compiles those
        try:
            compiled = torch.jit.trace(module, torch.zeros(1, n_channels, int(view.size), int(view.size)))
        except Exception as exc:  # noqa: BLE001 - named for the user, with torch's reason
            raise ConfigError(f"view {view.name!r}: the module can be neither scripted nor traced ({exc})") from exc
    buffer = io.BytesIO()
    torch.jit.save(compiled, buffer)
    return buffer.getvalue()


@functools.lru_cache(maxsize=8)
def _load(path: RunPath, sha256: str) -> Any:
    """A view's TorchScript model, read once per worker process (the sha256 keys a changed file)."""
    import torch

    return torch.jit.load(io.BytesIO(path.read_bytes()), map_location="cpu").eval()


def embed_view(view: ViewPlan, image: np.ndarray, labels: np.ndarray, pixel_size: Sequence[float],
               channels: tuple[int, ...]) -> pd.DataFrame:
    """The view's embedding of every cell of ``labels`` on the field ``image`` (c, y, x): one row per
    label (index ``label``), columns ``<name>_0000`` ...."""
    import torch

    from .cells import extract_cells

    crops, table = extract_cells(image, labels, pixel_size, view.crop, channels=[list(channels)])
    x = torch.from_numpy(np.ascontiguousarray(crops[:, 0], dtype=np.float32))
    if view.mean is not None:
        x = x - torch.tensor(view.mean).view(1, -1, 1, 1)
    if view.std is not None:
        x = x / torch.tensor(view.std).view(1, -1, 1, 1)
    model = _load(view.path, view.sha256)
    with torch.inference_mode():
        parts = [model(x[i:i + view.batch_size]).float().reshape(min(view.batch_size, len(x) - i), -1)
                 for i in range(0, len(x), view.batch_size)]
    values = torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)
    columns = [f"{view.name}_{i:04d}" for i in range(values.shape[1])]
    return pd.DataFrame(values, columns=columns, index=pd.Index(table["label"].to_numpy(), name="label"))
