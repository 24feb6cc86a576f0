"""The results store of an embedding run: one shard per field plus ``manifest.json``.

Layout inside the output directory::

    manifest.json                      inputs, effective parameters, versions, per-field status
    shards/<plate>/<well>_<field>.npz  embeddings, probabilities and the cell table of one field
    .lock                              present while a run writes here

Shards are written by the worker that computed the field, to a temporary name then renamed, so a shard
that exists is complete; each carries the digest of the parameters that made it, and a rerun skips the
fields whose shard exists with the same digest (resume). The manifest is rewritten by the client as
results stream in (also atomically); it is a record for people and tools, the shards are the truth.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import socket
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._constants import Files, Obs, Status
from .errors import RunDirectoryError

log = logging.getLogger(__name__)

SHARD_FORMAT = 1
"""Version of the shard layout; shards of another version are recomputed."""

MANIFEST_FORMAT = 1

DONE, FAILED, PENDING = Status.DONE, Status.FAILED, Status.PENDING

_CELL_COLUMNS = (Obs.LABEL, Obs.AREA, Obs.CENTROID_Y, Obs.CENTROID_X)


@dataclass(frozen=True, order=True)
class FieldId:
    """One field of one plate: the identity a field keeps from job to shard to manifest to AnnData.

    Attributes
    ----------
    plate
        The plate's name (unique within a run).
    well
        Well name, ``"B03"``.
    field
        The field's path inside the well (``"0"``).
    """

    plate: str
    well: str
    field: str

    def __post_init__(self) -> None:
        for part, what in ((self.plate, "plate name"), (self.well, "well"), (self.field, "field")):
            if not part or "/" in part or "\\" in part or part in (".", ".."):
                msg = f"{what} {part!r} cannot name a field of a run (empty or contains a path separator)"
                raise RunDirectoryError(msg)

    @property
    def key(self) -> str:
        """Manifest key: ``"<plate>/<well>/<field>"``."""
        return f"{self.plate}/{self.well}/{self.field}"

    @property
    def obs_prefix(self) -> str:
        """Start of the obs names of the field's cells: ``"<plate>_<well>_<field>"`` (then ``_<label>``)."""
        return f"{self.plate}_{self.well}_{self.field}"

    @property
    def shard(self) -> str:
        """Path of the field's shard inside the run directory."""
        return f"{Files.SHARDS}/{self.plate}/{self.well}_{self.field}.npz"

    @classmethod
    def from_key(cls, key: str) -> FieldId:
        """The field a manifest key names."""
        parts = str(key).split("/")
        if len(parts) != 3:
            msg = f"{key!r} is not a field key '<plate>/<well>/<field>'"
            raise RunDirectoryError(msg)
        return cls(*parts)

    def __str__(self) -> str:
        return self.key


def parameters_digest(parameters: Mapping[str, Any]) -> str:
    """Short sha256 of the JSON form of ``parameters``: shards made with other parameters do not match."""
    text = json.dumps(parameters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A killed process leaves either the old file or the new one, never half of one. There is no
    fsync (it cost 50 ms a shard on network and busy disks): after a power cut a shard may be empty,
    which :func:`shard_meta` treats as missing, so the field is simply recomputed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None:
            raise
        # a failed write (disk full, file-size limit) names no file; say which one could not be written
        raise OSError(exc.errno, f"{exc.strerror or exc} writing {len(data)} bytes", str(path)) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class Shard:
    """The cells of one field as stored: arrays in cell order (ascending label) plus metadata.

    Attributes
    ----------
    embedding
        float32 (n_cells, embedding width; passes concatenated).
    probabilities
        float32 (n_cells, 31 * passes) or None when the model has no classifiers.
    cells
        ``label``, ``area``, ``centroid_y``, ``centroid_x`` (pixels at level 0).
    dropped
        reason -> labels not embedded for that reason (border, too small, ...).
    meta
        plate, well, field, digest, seconds and other facts about the run of this field.
    """

    embedding: np.ndarray
    probabilities: np.ndarray | None
    cells: pd.DataFrame
    dropped: dict[str, list[int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return int(self.embedding.shape[0])


def write_shard(path: str | os.PathLike, shard: Shard) -> Path:
    """Write ``shard`` atomically to ``path`` (``.npz``)."""
    import io

    path = Path(path)
    n = shard.n_cells
    if len(shard.cells) != n or (shard.probabilities is not None and shard.probabilities.shape[0] != n):
        msg = (f"shard {path}: {n} embeddings but {len(shard.cells)} cells"
               + ("" if shard.probabilities is None else f" and {shard.probabilities.shape[0]} probability rows"))
        raise ValueError(msg)
    meta = {**shard.meta, "format": SHARD_FORMAT, "n_cells": n,
            "dropped": {k: [int(v) for v in vals] for k, vals in shard.dropped.items()}}
    arrays: dict[str, np.ndarray] = {
        "embedding": np.ascontiguousarray(shard.embedding, dtype=np.float32),
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    }
    if shard.probabilities is not None:
        arrays["probabilities"] = np.ascontiguousarray(shard.probabilities, dtype=np.float32)
    for col in _CELL_COLUMNS:
        arrays[f"cells_{col}"] = shard.cells[col].to_numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_shard(path: str | os.PathLike) -> Shard:
    """Read a shard written by :func:`write_shard`.

    Raises
    ------
    RunDirectoryError
        The file is not a readable shard (damaged or from another tool).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            embedding = data["embedding"]
            probabilities = data["probabilities"] if "probabilities" in data.files else None
            cells = pd.DataFrame({col: data[f"cells_{col}"] for col in _CELL_COLUMNS})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        msg = f"results shard {path} is damaged or not a subcell-scale shard ({exc}); delete it to recompute the field"
        raise RunDirectoryError(msg) from exc
    dropped = {k: list(v) for k, v in meta.get("dropped", {}).items()}
    return Shard(embedding, probabilities, cells, dropped, meta)


def read_shard_cells(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, tuple[int, ...]]]:
    """The cell table of a shard and the shapes of its arrays, without reading the arrays.

    What a streamed assembly needs first: ``obs`` and the row count of every field, before any
    embedding is read.

    Raises
    ------
    RunDirectoryError
        The file is not a readable shard.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            cells = pd.DataFrame({col: data[f"cells_{col}"] for col in _CELL_COLUMNS})
        shapes = {}
        with zipfile.ZipFile(path) as archive:
            for name in ("embedding", "probabilities"):
                if f"{name}.npy" in archive.namelist():
                    with archive.open(f"{name}.npy") as fh:
                        version = np.lib.format.read_magic(fh)
                        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0)
                        shapes[name] = tuple(int(v) for v in read_header(fh)[0])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        msg = f"results shard {path} is damaged or not a subcell-scale shard ({exc}); delete it to recompute the field"
        raise RunDirectoryError(msg) from exc
    return cells, shapes


def read_shard_array(path: str | os.PathLike, name: str) -> np.ndarray:
    """One array of a shard (``"embedding"`` or ``"probabilities"``), float32."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data[name], dtype=np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        msg = f"results shard {path}: cannot read {name!r} ({exc}); delete the shard to recompute the field"
        raise RunDirectoryError(msg) from exc


def shard_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """Metadata of a complete shard, or None when it is missing, damaged or of another format."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        log.warning("ignoring damaged shard %s (it will be recomputed)", path)
        return None
    return meta if meta.get("format") == SHARD_FORMAT else None


class ResultsStore:
    """An output directory holding shards and the manifest of one embedding run (see module doc).

    Parameters
    ----------
    root
        The output directory (created if missing).
    flush_interval
        Seconds between manifest rewrites while results stream in; every status change is written at
        the latest on :meth:`flush` (called at the end of a run).
    """

    def __init__(self, root: str | os.PathLike, *, flush_interval: float = 2.0) -> None:
        self.root = Path(root).expanduser().absolute()  # workers elsewhere resolve nothing against their cwd
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"output directory {self.root}: cannot be created ({exc})"
            raise RunDirectoryError(msg) from exc
        self.flush_interval = flush_interval
        self._last_flush = 0.0
        self._dirty = False
        self.manifest: dict[str, Any] = self._read_manifest()

    # -- paths --------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / Files.MANIFEST

    def shard_path(self, fid: FieldId) -> Path:
        """Where the shard of a field lives (``shards/<plate>/<well>_<field>.npz``)."""
        return self.root / fid.shard

    # -- manifest -----------------------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any]:
        """The manifest; a damaged one is kept aside (``manifest.json.damaged-<time>``) and rebuilt.

        The shards are the truth: a run that finds the manifest damaged starts a new one, and every
        shard it can verify (its digest and fingerprint) is recorded in it again, so nothing finished
        is recomputed and nothing is lost.
        """
        if not self.manifest_path.exists():
            return {}
        try:
            manifest = json.loads(self.manifest_path.read_text())
            problem = None if isinstance(manifest, dict) else f"expected a JSON object, found {type(manifest).__name__}"
        except (OSError, ValueError) as exc:
            problem = f"not readable JSON ({exc})"
        if problem is None:
            return manifest
        aside = self.manifest_path.with_name(f"{Files.MANIFEST}.damaged-{_dt.datetime.now():%Y%m%dT%H%M%S}")
        try:
            os.replace(self.manifest_path, aside)
        except OSError as exc:
            msg = f"{self.manifest_path} is damaged ({problem}) and cannot be moved aside ({exc})"
            raise RunDirectoryError(msg) from exc
        log.warning("%s is damaged (%s); kept as %s and rebuilt from the shards", self.manifest_path, problem,
                    aside.name)
        return {}

    def begin(self, *, inputs: Mapping[str, Any], parameters: Mapping[str, Any], model: Mapping[str, Any],
              versions: Mapping[str, Any], digest: str) -> None:
        """Record a run's inputs and parameters; refuse a directory made with other parameters.

        Raises
        ------
        RunDirectoryError
            The manifest holds results computed with another parameter digest; mixing them would give
            an AnnData whose cells were embedded differently.
        """
        embed = self.manifest.get("embed", {})
        previous = embed.get("digest")
        if previous is not None and previous != digest and any(
                f.get("status") == DONE for f in self.manifest.get("fields", {}).values()):
            changed = sorted(k for k in set(parameters) | set(embed.get("parameters", {}))
                             if parameters.get(k) != embed.get("parameters", {}).get(k))
            msg = (f"output directory {self.root} holds results made with other parameters "
                   f"(differing: {', '.join(changed) or 'model'}); use another --out or delete it")
            raise RunDirectoryError(msg)
        now = _now()
        self.manifest.setdefault("format", MANIFEST_FORMAT)
        self.manifest.setdefault("created", now)
        self.manifest["updated"] = now
        self.manifest["embed"] = {"digest": digest, "inputs": dict(inputs), "parameters": dict(parameters),
                                  "model": dict(model), "versions": dict(versions), "started": now}
        self.manifest.setdefault("fields", {})
        self.flush(force=True)

    def field(self, fid: FieldId) -> dict[str, Any]:
        """The manifest record of a field (empty when the manifest does not know it)."""
        return dict(self.manifest.get("fields", {}).get(fid.key, {}))

    def set_pending(self, fids: list[FieldId]) -> None:
        """Mark fields that have no finished result yet as pending (failed ones keep their last error)."""
        fields = self.manifest.setdefault("fields", {})
        for fid in fids:
            if fields.get(fid.key, {}).get("status") not in (DONE, FAILED):
                fields[fid.key] = {"status": PENDING}
        self._dirty = True

    def record_done(self, fid: FieldId, *, n_cells: int, dropped: Mapping[str, int], seconds: float | None) -> None:
        """A field finished: its shard exists with ``n_cells`` cells."""
        self.manifest.setdefault("fields", {})[fid.key] = {
            "status": DONE, "n_cells": int(n_cells), "dropped": {k: int(v) for k, v in dropped.items()},
            "seconds": None if seconds is None else round(float(seconds), 3), "shard": fid.shard, "error": None}
        self._dirty = True
        self.flush()

    def record_failed(self, fid: FieldId, *, error: str, seconds: float | None = None, attempts: int = 1) -> None:
        """A field failed after its retries; ``error`` is the message a user needs to fix it."""
        self.manifest.setdefault("fields", {})[fid.key] = {
            "status": FAILED, "n_cells": None, "dropped": {}, "error": error, "attempts": int(attempts),
            "seconds": None if seconds is None else round(float(seconds), 3), "shard": None}
        self._dirty = True
        self.flush()

    def summarize(self, **extra: Any) -> dict[str, Any]:
        """Counts of done / failed / pending fields and cells, written into the manifest."""
        fields = self.manifest.get("fields", {})
        statuses = [f.get("status") for f in fields.values()]
        summary = {"fields": len(fields), DONE: statuses.count(DONE), FAILED: statuses.count(FAILED),
                   PENDING: statuses.count(PENDING),
                   "n_cells": int(sum(f.get("n_cells") or 0 for f in fields.values())), **extra}
        self.manifest.setdefault("embed", {})["summary"] = summary
        self._dirty = True
        return summary

    def update(self, section: str, value: Any) -> None:
        """Set a top-level manifest section (other stages of a run add theirs this way) and write it."""
        self.manifest[section] = value
        self._dirty = True
        self.flush(force=True)

    def flush(self, *, force: bool = False) -> None:
        """Rewrite the manifest if something changed and ``flush_interval`` has passed (or ``force``)."""
        if not (self._dirty or force):
            return
        if not force and time.monotonic() - self._last_flush < self.flush_interval:
            return
        self.manifest["updated"] = _now()
        text = json.dumps(self.manifest, indent=1, sort_keys=False, default=_json_default)
        atomic_write_bytes(self.manifest_path, text.encode())
        self._last_flush = time.monotonic()
        self._dirty = False

    # -- lock ---------------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``.lock`` while a run writes here; a lock left by a dead process on this host is taken over.

        Raises
        ------
        RunDirectoryError
            Another live process is writing to the same directory.
        """
        path = self.root / Files.LOCK
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._stale(path):
                    log.warning("removing stale lock %s left by a process that is gone", path)
                    path.unlink(missing_ok=True)
                    continue
                msg = (f"output directory {self.root} is in use by another run ({path} held by "
                       f"{path.read_text(errors='replace').strip()}); wait for it or delete the lock if it is stale")
                raise RunDirectoryError(msg) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(owner, fh)
            break
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    @staticmethod
    def _stale(path: Path) -> bool:
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            return True
        if owner.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    return str(obj)
