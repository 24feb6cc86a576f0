"""The results store of a run: one shard per field, the fields' records per plate, and ``manifest.json``.

Layout inside the output directory::

    manifest.json                      the run, its inputs, parameters, versions, one line per plate
    records/<plate>.json               the record of each field of the plate (:mod:`subcell_scale.records`)
    shards/<plate>/<well>_<field>.npz  embeddings, probabilities and the cell table of one field
    .lock                              present while a run writes here

Shards are written by the worker that computed the field, whole (to a temporary name then renamed on
a file system, as one object on object storage), so a shard that exists is complete; each carries the
digest of the parameters that made it, and its record keeps its size and sha256, so a rerun skips the
fields whose shard is there as it was written (resume). The records and the manifest are written by
the client as results stream in, a plate's file at a time; they are records for people and tools, the
shards are the truth.

The directory is a local folder (shared by the workers) or an fsspec URL such as ``s3://bucket/run``
for clusters without a shared file system: :class:`~subcell_scale.rundir.RunPath` is the one way every
part of a run reads and writes it, and says what each operation guarantees on either.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import socket
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._constants import Files, Obs, Status
from .errors import RunDirectoryError
from .rundir import FieldId, RunPath

log = logging.getLogger(__name__)

SHARD_FORMAT = 1
"""Version of the shard layout; shards of another version are recomputed."""

MANIFEST_FORMAT = 2

DONE, FAILED, PENDING = Status.DONE, Status.FAILED, Status.PENDING

_CELL_COLUMNS = (Obs.LABEL, Obs.AREA, Obs.CENTROID_Y, Obs.CENTROID_X)


def parameters_digest(parameters: Mapping[str, Any]) -> str:
    """Short sha256 of the JSON form of ``parameters``: shards made with other parameters do not match."""
    text = json.dumps(parameters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    views
        Other views of the same cells (``"cellprofiler"``, a user's model): name -> one row per cell,
        in the rows of ``cells``, named columns (stored float32 with their names).
    """

    embedding: np.ndarray
    probabilities: np.ndarray | None
    cells: pd.DataFrame
    dropped: dict[str, list[int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    views: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return int(self.embedding.shape[0])


def encode_shard(shard: Shard) -> bytes:
    """The bytes of ``shard`` as a ``.npz`` file (what :func:`write_shard` writes; its sha256 goes into the field's record)."""
    n = shard.n_cells
    if len(shard.cells) != n or (shard.probabilities is not None and shard.probabilities.shape[0] != n):
        msg = (f"{n} embeddings but {len(shard.cells)} cells"
               + ("" if shard.probabilities is None else f" and {shard.probabilities.shape[0]} probability rows"))
        raise ValueError(msg)
    bad = [k for k, v in shard.views.items() if len(v) != n]
    if bad:
        raise ValueError(f"{n} embeddings but view(s) {bad} have {[len(shard.views[k]) for k in bad]} rows")
    meta = {**shard.meta, "format": SHARD_FORMAT, "n_cells": n,
            "dropped": {k: [int(v) for v in vals] for k, vals in shard.dropped.items()},
            **({"views": {k: [str(c) for c in v.columns] for k, v in shard.views.items()}} if shard.views else {})}
    arrays: dict[str, np.ndarray] = {
        "embedding": np.ascontiguousarray(shard.embedding, dtype=np.float32),
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    }
    if shard.probabilities is not None:
        arrays["probabilities"] = np.ascontiguousarray(shard.probabilities, dtype=np.float32)
    for col in (*_CELL_COLUMNS, Obs.NONFINITE):
        if col in shard.cells:
            arrays[f"cells_{col}"] = shard.cells[col].to_numpy()
    for name, frame in shard.views.items():
        arrays[f"view_{name}"] = np.ascontiguousarray(frame.to_numpy(dtype=np.float32))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_shard(path: str | os.PathLike | RunPath, shard: Shard) -> Path | RunPath:
    """Write ``shard`` whole to ``path`` (``.npz``); returns the file written (a :class:`~pathlib.Path`
    when it is local, the :class:`RunPath` on object storage)."""
    path = RunPath.of(path)
    try:
        data = encode_shard(shard)
    except ValueError as exc:
        raise ValueError(f"shard {path}: {exc}") from None
    path.write_bytes(data)
    return path.local if path.is_local else path


_SHARD_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _cell_table(data: Any) -> pd.DataFrame:
    """The cell table of an opened shard (its count of non-finite pixels only when the run kept one)."""
    optional = [Obs.NONFINITE] if f"cells_{Obs.NONFINITE}" in data.files else []
    return pd.DataFrame({col: data[f"cells_{col}"] for col in (*_CELL_COLUMNS, *optional)})


def read_shard(path: str | os.PathLike | RunPath) -> Shard:
    """Read a shard written by :func:`write_shard`.

    Raises
    ------
    RunDirectoryError
        The file is not a readable shard (damaged or from another tool).
    """
    path = RunPath.of(path)
    try:
        with path.open_read() as fh, np.load(fh, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            embedding = data["embedding"]
            probabilities = data["probabilities"] if "probabilities" in data.files else None
            cells = _cell_table(data)
            views = {name: pd.DataFrame(data[f"view_{name}"], columns=columns)
                     for name, columns in meta.get("views", {}).items()}
    except _SHARD_ERRORS as exc:
        msg = f"results shard {path} is damaged or not a subcell-scale shard ({exc}); delete it to recompute the field"
        raise RunDirectoryError(msg) from exc
    dropped = {k: list(v) for k, v in meta.get("dropped", {}).items()}
    return Shard(embedding, probabilities, cells, dropped, meta, views)


def read_shard_cells(path: str | os.PathLike | RunPath
                     ) -> tuple[pd.DataFrame, dict[str, tuple[int, ...]], dict[str, Any]]:
    """The cell table of a shard, the shapes of its arrays and its metadata, without reading the arrays.

    What a streamed assembly needs first: ``obs`` and the row count of every field, before any
    embedding is read.

    Raises
    ------
    RunDirectoryError
        The file is not a readable shard.
    """
    path = RunPath.of(path)
    try:
        with path.open_read() as fh:
            with np.load(fh, allow_pickle=False) as data:
                cells = _cell_table(data)
                meta = json.loads(data["meta"].tobytes().decode())
            fh.seek(0)
            shapes = {}
            with zipfile.ZipFile(fh) as archive:
                for name in ("embedding", "probabilities"):
                    if f"{name}.npy" in archive.namelist():
                        with archive.open(f"{name}.npy") as member:
                            version = np.lib.format.read_magic(member)
                            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                           else np.lib.format.read_array_header_2_0)
                            shapes[name] = tuple(int(v) for v in read_header(member)[0])
    except _SHARD_ERRORS as exc:
        msg = f"results shard {path} is damaged or not a subcell-scale shard ({exc}); delete it to recompute the field"
        raise RunDirectoryError(msg) from exc
    return cells, shapes, meta


def read_shard_array(path: str | os.PathLike | RunPath, name: str) -> np.ndarray:
    """One array of a shard (``"embedding"`` or ``"probabilities"``), float32."""
    path = RunPath.of(path)
    try:
        with path.open_read() as fh, np.load(fh, allow_pickle=False) as data:
            return np.asarray(data[name], dtype=np.float32)
    except _SHARD_ERRORS as exc:
        msg = f"results shard {path}: cannot read {name!r} ({exc}); delete the shard to recompute the field"
        raise RunDirectoryError(msg) from exc


def shard_meta(path: str | os.PathLike | RunPath) -> dict[str, Any] | None:
    """Metadata of a complete shard, or None when it is missing, damaged or of another format."""
    path = RunPath.of(path)
    try:
        with path.open_read() as fh, np.load(fh, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
    except (FileNotFoundError, IsADirectoryError):
        return None
    except _SHARD_ERRORS:
        log.warning("ignoring damaged shard %s (it will be recomputed)", path)
        return None
    return meta if meta.get("format") == SHARD_FORMAT else None


def verify_shard(path: str | os.PathLike | RunPath, sha256: str | None = None) -> dict[str, Any] | None:
    """The metadata of a shard read whole and found intact, else None (missing, damaged, another format).

    Intact means: its bytes have the ``sha256`` its record kept, or (without one) every array it holds
    reads back with its checksum. A shard damaged in the middle is caught here, where
    :func:`shard_meta` (which reads the metadata alone) would not see it.
    """
    path = RunPath.of(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        log.warning("shard %s is not what was written (sha256 differs); its field is recomputed", path)
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode())
            if sha256 is None:
                for name in arrays.files:
                    arrays[name]  # noqa: B018 - reading a member checks its CRC
    except _SHARD_ERRORS:
        log.warning("shard %s is damaged; its field is recomputed", path)
        return None
    if meta.get("format") != SHARD_FORMAT:
        return None
    return {**meta, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_field_records(run: str | os.PathLike | RunPath, storage_options: Mapping[str, Any] | None = None, *,
                       stage: str = "embed") -> dict[str, dict[str, Any]]:
    """Every field record of a run directory, by field key (``"<plate>/<well>/<field>"``), plate after plate.

    What each plate's records hold (``stage="embed"``: how its embedding ended; ``"segment"``: its
    segmentation), gathered for people and tests; a run reads the plates' records one at a time.
    """
    from .records import FieldRecords

    root = RunPath.of(run, storage_options)
    try:
        manifest = json.loads((root / Files.MANIFEST).read_bytes())
    except FileNotFoundError:
        return {}
    records = FieldRecords(root)
    plates = [records.plate(name) for name in manifest.get("plates", {})]
    return {key: record for plate in plates
            for key, record in (plate.segment if stage == "segment" else plate.fields).items()}


class ResultsStore:
    """An output directory holding the shards, the field records and the manifest of one run (see module doc).

    Parameters
    ----------
    root
        The output directory (created if missing): a local path or an fsspec URL (``s3://bucket/run``).
    flush_interval
        Seconds between rewrites of the manifest and of a plate's records while results stream in;
        every change is written at the latest on :meth:`flush` with ``force`` (called at the end of a
        stage). Each write costs the size of the manifest (one line per plate) or of one plate's
        records, never of the whole run.
    storage_options
        fsspec options of a URL ``root`` (credentials, endpoint); workers receive them with each
        shard's :class:`RunPath`.
    """

    def __init__(self, root: str | os.PathLike | RunPath, *, flush_interval: float = 2.0,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        from .records import FieldRecords

        self.root = RunPath.of(root, storage_options)  # local: absolute, so workers elsewhere read the same
        try:
            self.root.mkdir()
        except RunDirectoryError:
            raise
        except OSError as exc:
            msg = f"output directory {self.root}: cannot be created ({exc})"
            raise RunDirectoryError(msg) from exc
        self.flush_interval = flush_interval
        self._last_flush = 0.0
        self._dirty = False
        self.records = FieldRecords(self.root, flush_interval=flush_interval)
        self.manifest: dict[str, Any] = self._read_manifest()
        if "fields" in self.manifest:  # written before field records were kept per plate
            self.records.adopt(self.manifest.pop("fields"))
            self._dirty = True

    # -- paths --------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> RunPath:
        return self.root / Files.MANIFEST

    def shard_path(self, fid: FieldId) -> RunPath:
        """Where the shard of a field lives (``shards/<plate>/<well>_<field>.npz``)."""
        return self.root / fid.shard

    # -- manifest -----------------------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any]:
        """The manifest; a damaged one is kept aside (``manifest.json.damaged-<time>``) and rebuilt.

        The shards are the truth: a run that finds the manifest damaged starts a new one, and every
        shard it can verify (its digest and fingerprint) is recorded in it again, so nothing finished
        is recomputed and nothing is lost.

        Raises
        ------
        RunDirectoryError
            The directory cannot be read (no permission, wrong credentials for a URL).
        """
        try:
            manifest = json.loads(self.manifest_path.read_bytes())
            problem = None if isinstance(manifest, dict) else f"expected a JSON object, found {type(manifest).__name__}"
        except FileNotFoundError:
            return {}
        except PermissionError as exc:
            raise RunDirectoryError(self._unreachable(exc)) from exc
        except (OSError, ValueError) as exc:
            problem = f"not readable JSON ({exc})"
        if problem is None:
            return manifest
        aside = self.root / f"{Files.MANIFEST}.damaged-{_dt.datetime.now():%Y%m%dT%H%M%S}"
        try:
            self.manifest_path.move(aside)
        except OSError as exc:
            msg = f"{self.manifest_path} is damaged ({problem}) and cannot be moved aside ({exc})"
            raise RunDirectoryError(msg) from exc
        log.warning("%s is damaged (%s); kept as %s and rebuilt from the shards", self.manifest_path, problem,
                    aside.name)
        return {}

    def _unreachable(self, exc: BaseException) -> str:
        """The message of a run directory that cannot be read or written, naming it and what to check."""
        check = ("check that the bucket exists and that the credentials (storage_options or the environment) "
                 "may read and write there") if not self.root.is_local else "check the folder's permissions"
        return f"output directory {self.root}: cannot be used ({type(exc).__name__}: {exc}); {check}"

    def check_compatible(self, digest: str, parameters: Mapping[str, Any]) -> None:
        """Refuse a directory holding results made with other embedding parameters (before anything is written).

        Raises
        ------
        RunDirectoryError
            The manifest holds finished fields computed with another parameter digest; mixing them
            would give an AnnData whose cells were embedded differently. The message names the
            parameters that differ.
        """
        embed = self.manifest.get("embed", {})
        previous = embed.get("digest")
        if previous is not None and previous != digest and any(
                p.get(DONE) for p in self.manifest.get("plates", {}).values()):
            changed = sorted(k for k in set(parameters) | set(embed.get("parameters", {}))
                             if parameters.get(k) != embed.get("parameters", {}).get(k))
            msg = (f"output directory {self.root} holds results made with other parameters "
                   f"(differing: {', '.join(changed) or 'model'}); use another --out or delete it")
            raise RunDirectoryError(msg)

    def begin(self, *, inputs: Mapping[str, Any], parameters: Mapping[str, Any], model: Mapping[str, Any],
              versions: Mapping[str, Any], digest: str) -> None:
        """Record an embedding's inputs and parameters; refuse a directory made with other parameters
        (:meth:`check_compatible`)."""
        self.check_compatible(digest, parameters)
        now = _now()
        self.manifest["format"] = MANIFEST_FORMAT
        self.manifest.setdefault("created", now)
        self.manifest["updated"] = now
        self.manifest["embed"] = {"digest": digest, "inputs": dict(inputs), "parameters": dict(parameters),
                                  "model": dict(model), "versions": dict(versions), "started": now}
        self.manifest.setdefault("plates", {})
        self.flush(force=True)

    # -- field records ------------------------------------------------------------------------------
    def field(self, fid: FieldId) -> dict[str, Any]:
        """The record of a field (empty when the run directory does not know it)."""
        return self.records.field(fid)

    def fields(self) -> Iterator[tuple[FieldId, dict[str, Any]]]:
        """Every field record of the run directory, plate after plate (each plate's file read once)."""
        names = list(dict.fromkeys([*self.manifest.get("plates", {}), *self.records.known()]))
        for name in names:
            for key, record in self.records.plate(name).fields.items():
                yield FieldId.from_key(key), dict(record)

    def set_pending(self, fids: Sequence[FieldId], *, force: bool = False) -> None:
        """Mark fields that have no finished result yet as pending (failed ones keep their last error);
        with ``force``, done ones too (a shard found damaged)."""
        for fid in fids:
            if force or self.records.field(fid).get("status") not in (DONE, FAILED):
                self.records.set(fid, {"status": PENDING})
        self._dirty = True

    def record_done(self, fid: FieldId, *, n_cells: int, dropped: Mapping[str, int], seconds: float | None,
                    **facts: Any) -> None:
        """A field finished: its shard exists with ``n_cells`` cells; ``facts`` are kept with it (shard
        ``size`` and ``sha256``, ``fingerprint`` of its pixels, parameter ``digest``, ``segmented``, ...)."""
        self.records.set(fid, {"status": DONE, "n_cells": int(n_cells),
                               "dropped": {k: int(v) for k, v in dropped.items()},
                               "seconds": None if seconds is None else round(float(seconds), 3), "shard": fid.shard,
                               "error": None, **{k: v for k, v in facts.items() if v is not None}})
        self._dirty = True
        self.flush()

    def record_failed(self, fid: FieldId, *, error: str, seconds: float | None = None, attempts: int = 1) -> None:
        """A field failed after its retries; ``error`` is the message a user needs to fix it."""
        self.records.set(fid, {"status": FAILED, "n_cells": None, "dropped": {}, "error": error,
                               "attempts": int(attempts), "seconds": None if seconds is None else round(float(seconds), 3),
                               "shard": None})
        self._dirty = True
        self.flush()

    def record_segmented(self, fid: FieldId, record: Mapping[str, Any]) -> None:
        """The segmentation stage ended for a field (done, skipped because it had labels, or failed)."""
        self.records.set_segmented(fid, record)
        self._dirty = True
        self.flush()

    def close_plate(self, plate: str, fids: Sequence[FieldId]) -> bool:
        """Every field of ``plate`` has ended: mark it complete when all are done; returns whether it is."""
        complete = self.records.plate(plate).close([f.key for f in fids])
        self.records.compact(plate)
        self._dirty = True
        self.flush()
        return complete

    def summarize(self, **extra: Any) -> dict[str, Any]:
        """Counts of done / failed / pending fields and cells over the plates, written into the manifest."""
        self._sync_plates()
        plates = self.manifest.get("plates", {}).values()
        summary = {"fields": sum(p["fields"] for p in plates),
                   **{s: sum(p[s] for p in plates) for s in (DONE, FAILED, PENDING)},
                   "n_cells": int(sum(p["n_cells"] for p in plates)), "plates": len(plates),
                   "complete_plates": sum(bool(p.get("complete")) for p in plates), **extra}
        self.manifest.setdefault("embed", {})["summary"] = summary
        self._dirty = True
        return summary

    def update(self, section: str, value: Any) -> None:
        """Set a top-level manifest section (other stages of a run add theirs this way) and write it."""
        self.manifest[section] = value
        self._dirty = True
        self.flush(force=True)

    def _sync_plates(self) -> None:
        """The manifest's line per plate, from the plates whose records this run touched."""
        plates = self.manifest.setdefault("plates", {})
        for name in self.records.known():
            record = self.records.plate(name)
            plates[name] = {**record.counts(), "complete": record.complete,
                            "record": f"{Files.RECORDS}/{name}.json"}

    def flush(self, *, force: bool = False) -> None:
        """Write what changed: the plates' records and the manifest, each at most every ``flush_interval``
        seconds (or now with ``force``)."""
        self.records.flush(force=force)
        if not (self._dirty or force):
            return
        if not force and time.monotonic() - self._last_flush < self.flush_interval:
            return
        self._sync_plates()
        self.manifest["updated"] = _now()
        text = json.dumps(self.manifest, indent=1, sort_keys=False, default=_json_default)
        self.manifest_path.write_bytes(text.encode())
        self._last_flush = time.monotonic()
        self._dirty = False

    # -- lock ---------------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``.lock`` while a run writes here; a lock left by a dead process on this host is taken over.

        What it guarantees depends on where the directory is. On a local or shared file system the
        lock is created with ``O_EXCL``: two runs never both hold it. On object storage it is
        created with a conditional PUT (``If-None-Match: *``, which AWS S3 and most S3-compatible
        servers honour) and read back: two runs cannot both create it there either; on a store that
        ignores the condition, the read-back still refuses a run that started earlier, but two runs
        started in the same instant could both go on (their shards are the same; the manifest is
        the last writer's, and a rerun rebuilds it from the shards). A lock left by a run killed on
        another host is never taken over: delete it (the message names it).

        Raises
        ------
        RunDirectoryError
            Another live process is writing to the same directory, or the lock cannot be written
            there (a missing bucket, wrong credentials).
        """
        path = self.root / Files.LOCK
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "token": uuid.uuid4().hex}
        for _ in range(2):
            try:
                path.create(json.dumps(owner).encode())
            except FileExistsError:
                if self._stale(path):
                    log.warning("removing stale lock %s left by a process that is gone", path)
                    path.remove()
                    continue
                msg = (f"output directory {self.root} is in use by another run ({path} held by "
                       f"{self._holder(path)}); wait for it or delete the lock if it is stale")
                raise RunDirectoryError(msg) from None
            except OSError as exc:
                raise RunDirectoryError(self._unreachable(exc)) from exc
            break
        try:
            yield
        finally:
            path.remove()

    @staticmethod
    def _holder(path: RunPath) -> str:
        try:
            return path.read_bytes().decode(errors="replace").strip()
        except OSError:
            return "a run that has just finished"

    @staticmethod
    def _stale(path: RunPath) -> bool:
        try:
            owner = json.loads(path.read_bytes())
        except (OSError, ValueError):  # unreadable, or released meanwhile
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
    if isinstance(obj, RunPath):
        return obj.url
    return str(obj)
