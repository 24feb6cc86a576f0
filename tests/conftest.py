"""Shared test setup: data and models built once per session and handed out to every test file.

Fixtures that write files (demo plates) are session-scoped and must be treated as read-only; a test
that changes a plate copies it first (``shutil.copytree``). In-memory objects are handed out as
copies by the module fixtures that use them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _shared import COMPOUNDS, MOA, TINY

HEAVY = ("slurm", "s3", "notebooks", "docs", "processes")
"""Marks of heavy tests (see pyproject.toml and tests/README.md): each implies ``slow``."""


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(items):
    """A test marked with one of :data:`HEAVY` is also ``slow``: ``-m "not slow"`` leaves them all out."""
    for item in items:
        if any(item.get_closest_marker(name) for name in HEAVY):
            item.add_marker(pytest.mark.slow)


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


class S3Server:
    """A real S3 protocol server (moto's server mode) on loopback, for runs without a shared file system.

    ``options`` are the fsspec storage options a run is given (worker processes reach the server
    with them too); ``fs`` is an s3fs client for the test's own checks.
    """

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{self._server._server.server_port}"
        self.options = {"key": "testing", "secret": "testing",
                        "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}}
        self.fs = self.filesystem(self.options)

    @staticmethod
    def filesystem(options: dict):
        import s3fs

        return s3fs.S3FileSystem(**options, use_listings_cache=False, skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        """Create the bucket ``name`` (empty) and return it."""
        if self.fs.exists(name):
            self.fs.rm(name, recursive=True)
        self.fs.call_s3("create_bucket", Bucket=name)
        return name

    @contextlib.contextmanager
    def checking_credentials(self):
        """Requests must be signed with credentials the server knows (moto accepts any by default)."""
        self._set_auth("0")
        try:
            yield
        finally:
            self._set_auth("inf")

    def _set_auth(self, count: str) -> None:
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """One :class:`S3Server` for the session (skipped where moto or s3fs are not installed)."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    server = S3Server()
    yield server
    server.stop()
