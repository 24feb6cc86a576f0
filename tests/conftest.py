"""Shared test setup: data and models built once per session and handed out to every test file.

Fixtures that write files (demo plates) are session-scoped and must be treated as read-only; a test
that changes a plate copies it first (``shutil.copytree``). In-memory objects are handed out as
copies by the module fixtures that use them.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _shared import COMPOUNDS, MOA, TINY


@pytest.fixture(scope="session", autouse=True)
def _offline():
    """No test reaches the real network for weights: downloads only from the loopback test server,
    in tests that switch this off themselves (worker processes inherit the environment)."""
    import os

    previous = os.environ.get("SUBCELL_SCALE_OFFLINE")
    os.environ["SUBCELL_SCALE_OFFLINE"] = "1"
    yield
    if previous is None:
        os.environ.pop("SUBCELL_SCALE_OFFLINE", None)
    else:
        os.environ["SUBCELL_SCALE_OFFLINE"] = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread in the test process while a module runs: two cores are shared with Dask workers."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def demo_plates(tmp_path_factory) -> Callable[..., dict]:
    """``demo_plates(**make_demo_plate options)`` -> ``{"plates", "plate", "platemap", "root"}``.

    The same options give the same plates, written once per session and shared: treat them as
    read-only and copy a plate (``shutil.copytree``) before changing it.
    """
    from subcell_scale.io.demo import make_demo_plate

    made: dict[str, dict] = {}

    def make(**options) -> dict:
        key = json.dumps(options, sort_keys=True)
        if key not in made:
            root = tmp_path_factory.mktemp("demo-plates")
            plates = [str(p) for p in make_demo_plate(root, **options)]
            made[key] = {"plates": plates, "plate": plates[0], "platemap": str(root / "platemap.csv"),
                         "root": root}
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_config():
    """A SubCell architecture small enough to embed a demo plate in seconds."""
    from subcell_scale.models.config import ModelConfig

    return ModelConfig(**TINY)


@pytest.fixture(scope="session")
def tiny_spec(tiny_config):
    """The tiny random model as workers build it (one classifier)."""
    from subcell_scale.models import ModelSpec

    return ModelSpec("random", config=tiny_config.to_dict(), seed=0, n_classifiers=1)


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    """The same tiny random model, built in the test process on the CPU."""
    return tiny_spec.load("cpu")


@pytest.fixture(scope="module")
def local_client():
    """A local cluster of two single-thread worker processes, each advertising one GPU slot."""
    from subcell_scale.distributed import get_client

    client = get_client("local", n_workers=2, threads_per_worker=1, dashboard=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def synthetic_cells() -> ad.AnnData:
    """A small cells AnnData following the contract: 2 plates, 12 wells each, 4 compound clusters."""
    from subcell_scale.models.registry import CLASS_NAMES

    rng = np.random.default_rng(0)
    records, x = [], []
    wells = [f"{r}{c:02d}" for r in "BCD" for c in range(2, 6)]
    for plate in ("P1", "P2"):
        for i, well in enumerate(wells):
            compound = COMPOUNDS[i % 4]
            for label in range(1, int(rng.integers(3, 9)) + 1):
                records.append({"plate": plate, "well": well, "field": str(label % 2), "label": label,
                                "compound": compound, "moa": MOA[compound], "area": float(rng.integers(200, 900))})
                x.append(np.eye(4, 16)[i % 4] * 5 + rng.normal(size=16))
    obs = pd.DataFrame(records)
    obs.index = [f"{r.plate}_{r.well}_{r.field}_{r.label}" for r in obs.itertuples()]
    for col in ("plate", "well", "field"):
        obs[col] = obs[col].astype("category")
    adata = ad.AnnData(X=np.asarray(x, dtype=np.float32), obs=obs)
    logits = rng.normal(size=(adata.n_obs, 31))
    logits[np.arange(adata.n_obs), obs["compound"].map({c: 5 * k for k, c in enumerate(COMPOUNDS)})] += 6
    adata.obsm["localization"] = (1 / (1 + np.exp(-logits))).astype(np.float32)
    adata.uns["localization_classes"] = list(CLASS_NAMES)
    return adata
