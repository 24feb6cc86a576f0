"""One ``settings`` object for the defaults a user may want to change once per session.

Functions take ``None`` for "use the setting" (``batch_size=None`` means ``settings.batch_size``), so a
notebook can set a default once, and the command line shows the same defaults as the Python API.
Settings read from the environment (``SUBCELL_SCALE_HOME``, ``SUBCELL_SCALE_OFFLINE``,
``SUBCELL_SCALE_BASE_URL``) are read when used, so a Dask worker started with its own environment
follows it; a value set on the object applies to this process only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_HOME = "SUBCELL_SCALE_HOME"
"""Environment variable naming the model cache folder."""
ENV_OFFLINE = "SUBCELL_SCALE_OFFLINE"
"""Environment variable that, set to 1/true/yes, forbids downloading weights."""
ENV_BASE_URL = "SUBCELL_SCALE_BASE_URL"
"""Environment variable naming where published weights are downloaded from (a mirror, a test server)."""
BASE_URL = "https://czi-subcell-public.s3.amazonaws.com/models"
"""Public bucket of the published checkpoints, used unless a setting, the variable or ``--base-url`` names another."""

_TRUE = ("1", "true", "yes", "on")


class Settings:
    """Session-wide defaults of subcell-scale.

    Attributes
    ----------
    model_cache
        Folder of downloaded weights: set here, else ``$SUBCELL_SCALE_HOME``, else
        ``~/.cache/subcell-scale``. Workers of a cluster read the same path, so on a cluster it should
        be on a shared filesystem (or set per node through the environment).
    offline
        Never download weights: a published variant missing from the cache is an error naming the
        download command. Set here or with ``SUBCELL_SCALE_OFFLINE=1``. Otherwise a published
        variant missing from the cache is downloaded on first use.
    base_url
        Where published weights are downloaded from: set here, else ``$SUBCELL_SCALE_BASE_URL``, else
        the public SubCell bucket over HTTPS. A mirror must hold the bucket's layout (``<variant>.pth``
        and ``<prefix>_<family>_MLP_classifier/..._seed_<k>.pth``).
    cluster
        What :func:`subcell_scale.get_client` starts when not told: ``"auto"``, ``"local"``, ``"cuda"`` or
        a cluster config file.
    progress
        Show progress bars over fields.
    batch_size
        Crops per forward pass (embeddings do not depend on it; memory does).
    worker_timeout
        Seconds a run waits for the first worker of a cluster that has none yet (a job queue or an
        adaptive cluster still starting) before it stops with an error.
    memory_budget
        Bytes of cell embeddings the client may hold at once while assembling a run's cells store
        (an int, or a string such as ``"2GB"``).
    lazy_obs
        Cells above which a run's cells store is opened with ``obs`` left in the store (read when a
        column is used), so the client holds only the cell names (:func:`subcell_scale.read_cells`);
        below it ``obs`` is read into memory, as scanpy expects.
    tune_allocator
        While a run's cells store is written, have glibc return freed blocks of 1 MiB and more to the
        system at once (its mmap threshold), which keeps the client's memory flat in the number of
        cells. glibc cannot go back to its adaptive threshold afterwards: the threshold is then
        glibc's initial 128 KiB. False leaves the allocator alone (more memory held after a large
        run); so does an mmap threshold chosen when the process started (``MALLOC_MMAP_THRESHOLD_``,
        ``GLIBC_TUNABLES``).
    verbosity
        Level of the ``subcell_scale`` logger (``"WARNING"``, ``"INFO"``, ``"DEBUG"`` or a number).
    """

    def __init__(self) -> None:
        self._model_cache: Path | None = None
        self._offline: bool | None = None
        self._base_url: str | None = None
        self._cluster = "auto"
        self._progress = True
        self._batch_size = 64
        self._worker_timeout = 600.0
        self._memory_budget = 2 << 30
        self._lazy_obs = 2_000_000
        self._tune_allocator = True

    # -- model weights --------------------------------------------------------------------------------
    @property
    def model_cache(self) -> Path:
        if self._model_cache is not None:
            return self._model_cache
        env = os.environ.get(ENV_HOME)
        return Path(env).expanduser() if env else Path.home() / ".cache" / "subcell-scale"

    @model_cache.setter
    def model_cache(self, value: str | os.PathLike[str] | None) -> None:
        self._model_cache = None if value is None else Path(value).expanduser()

    @property
    def offline(self) -> bool:
        if self._offline is not None:
            return self._offline
        return os.environ.get(ENV_OFFLINE, "").strip().lower() in _TRUE

    @offline.setter
    def offline(self, value: bool | None) -> None:
        self._offline = None if value is None else _bool("offline", value)

    @property
    def base_url(self) -> str:
        if self._base_url is not None:
            return self._base_url
        env = os.environ.get(ENV_BASE_URL, "").strip()
        if env:
            return _url(f"${ENV_BASE_URL}", env)
        return BASE_URL

    @base_url.setter
    def base_url(self, value: str | None) -> None:
        self._base_url = None if value is None else _url("settings.base_url", value)

    # -- running --------------------------------------------------------------------------------------
    @property
    def cluster(self) -> str:
        return self._cluster

    @cluster.setter
    def cluster(self, value: str | os.PathLike[str]) -> None:
        self._cluster = os.fspath(value)

    @property
    def progress(self) -> bool:
        return self._progress

    @progress.setter
    def progress(self, value: bool) -> None:
        self._progress = _bool("progress", value)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = _positive_int("batch_size", value)

    @property
    def worker_timeout(self) -> float:
        return self._worker_timeout

    @worker_timeout.setter
    def worker_timeout(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            msg = f"settings.worker_timeout must be a positive number of seconds, got {value!r}"
            raise ConfigError(msg)
        self._worker_timeout = float(value)

    @property
    def memory_budget(self) -> int:
        return self._memory_budget

    @memory_budget.setter
    def memory_budget(self, value: int | str) -> None:
        if isinstance(value, str):
            from dask.utils import parse_bytes

            try:
                value = parse_bytes(value)
            except ValueError as exc:
                msg = f"settings.memory_budget: cannot read {value!r} as a size ({exc})"
                raise ConfigError(msg) from exc
        self._memory_budget = _positive_int("memory_budget", value)

    @property
    def lazy_obs(self) -> int:
        return self._lazy_obs

    @lazy_obs.setter
    def lazy_obs(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            msg = f"settings.lazy_obs must be a number of cells >= 0, got {value!r}"
            raise ConfigError(msg)
        self._lazy_obs = value

    @property
    def tune_allocator(self) -> bool:
        return self._tune_allocator

    @tune_allocator.setter
    def tune_allocator(self, value: bool) -> None:
        self._tune_allocator = _bool("tune_allocator", value)

    @property
    def verbosity(self) -> int:
        return logging.getLogger("subcell_scale").getEffectiveLevel()

    @verbosity.setter
    def verbosity(self, value: int | str) -> None:
        level = logging.getLevelName(value.upper()) if isinstance(value, str) else value
        if not isinstance(level, int):
            msg = f"settings.verbosity: unknown level {value!r}; use WARNING, INFO, DEBUG or a number"
            raise ConfigError(msg)
        logging.getLogger("subcell_scale").setLevel(level)

    # -- helpers --------------------------------------------------------------------------------------
    @contextmanager
    def override(self, **values: Any) -> Iterator[Settings]:
        """Change settings inside a ``with`` block only (tests, one-off runs)."""
        names = ("model_cache", "offline", "base_url", "cluster", "progress", "batch_size", "worker_timeout",
                 "memory_budget", "lazy_obs", "tune_allocator", "verbosity")
        unknown = sorted(set(values) - set(names))
        if unknown:
            msg = f"unknown setting(s) {unknown}; settings are {list(names)}"
            raise ConfigError(msg)
        saved = {k: getattr(self, f"_{k}") for k in names if k != "verbosity"}
        level = logging.getLogger("subcell_scale").level
        try:
            for key, value in values.items():
                setattr(self, key, value)
            yield self
        finally:
            for key, value in saved.items():
                setattr(self, f"_{key}", value)
            logging.getLogger("subcell_scale").setLevel(level)

    def __repr__(self) -> str:
        return (f"Settings(model_cache={str(self.model_cache)!r}, offline={self.offline}, "
                f"base_url={self.base_url!r}, cluster={self.cluster!r}, progress={self.progress}, "
                f"batch_size={self.batch_size}, worker_timeout={self.worker_timeout}, "
                f"memory_budget={self.memory_budget}, lazy_obs={self.lazy_obs}, "
                f"tune_allocator={self.tune_allocator}, "
                f"verbosity={logging.getLevelName(self.verbosity)})")


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        msg = f"settings.{name} must be True or False, got {value!r}"
        raise ConfigError(msg)
    return value


def _url(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        msg = f"{name} must be an http:// or https:// URL, got {value!r}"
        raise ConfigError(msg)
    return value.rstrip("/")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"settings.{name} must be a positive integer, got {value!r}"
        raise ConfigError(msg)
    return int(value)


settings = Settings()
"""The session's settings (``subcell_scale.settings``)."""
