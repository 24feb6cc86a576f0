"""What became of each field of a run, kept per plate so that no record grows with the screen.

A screen has hundreds of plates and millions of fields. The run directory keeps the records of each
plate's fields apart, ``records/<plate>.json`` (done with its cells, shard size and sha256,
fingerprint of its pixels; failed with the error; pending); ``manifest.json`` keeps one summary per
plate (counts, and whether the plate is complete). While a plate's fields finish, their records are
appended to its log (``records/<plate>.log``, or one small object per write on object storage), so
the bytes written per field stay the same however large the plate or the screen; when the plate
ends its records are written whole once (``records/<plate>.json``) and the log goes. When every field
of a plate is done the plate is *complete*: its record says so with the digest of its shards, and a
resumed run recognises it from that record, a listing of its shards and one listing of the plate's
files, without reading a shard.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ._constants import Files, Status
from .rundir import FieldId, RunPath

log = logging.getLogger(__name__)

RECORD_FORMAT = 1


class PlateRecord:
    """The records of one plate's fields, as ``records/<plate>.json`` holds them.

    Attributes
    ----------
    name
        The plate's name.
    fields
        Field key (``"<plate>/<well>/<field>"``) -> its record, in the plate's field order.
    complete
        Every field of the plate is done (and :attr:`shards_digest` is the digest of their shards).
    """

    def __init__(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        data = dict(data or {})
        self.name = name
        self.fields: dict[str, dict[str, Any]] = {}
        self.complete = bool(data.get("complete", False))
        self.shards_digest: str | None = data.get("shards_digest")
        self.segment: dict[str, dict[str, Any]] = dict(data.get("segment") or {})
        self.dirty = False
        self.written = 0.0
        self.changes: list[dict[str, Any]] = []  # appended to the log at the next write
        self._counts = {"fields": 0, Status.DONE: 0, Status.FAILED: 0, Status.PENDING: 0, "n_cells": 0}
        for key, record in (data.get("fields") or {}).items():
            self.put(key, record)
        self.dirty = False

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Set a field's record, keeping the plate's counts (no pass over its fields)."""
        old = self.fields.get(key)
        for sign, entry in ((-1, old), (1, record)):
            if entry is None:
                continue
            self._counts["fields"] += sign
            status = entry.get("status")
            if status in self._counts:
                self._counts[status] += sign
            if status == Status.DONE:
                self._counts["n_cells"] += sign * int(entry.get("n_cells") or 0)
        self.fields[key] = dict(record)
        if record.get("status") != Status.DONE and self.complete:
            self.complete, self.shards_digest = False, None
        self.changes.append({"field": key, "record": self.fields[key]})
        self.dirty = True

    def put_segmented(self, key: str, record: Mapping[str, Any]) -> None:
        """Set a field's segmentation record."""
        self.segment[key] = dict(record)
        self.changes.append({"segment": key, "record": self.segment[key]})
        self.dirty = True

    def replay(self, change: Mapping[str, Any]) -> None:
        """Apply one line of the plate's log (a record written after its last whole write)."""
        if "field" in change:
            self.put(str(change["field"]), change["record"])
        elif "segment" in change:
            self.put_segmented(str(change["segment"]), change["record"])

    def counts(self) -> dict[str, int]:
        """Fields per status and the cells of the done ones."""
        return dict(self._counts)

    def to_dict(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "plate": self.name, "complete": self.complete,
                "shards_digest": self.shards_digest, "fields": self.fields,
                **({"segment": self.segment} if self.segment else {})}

    def close(self, keys: list[str]) -> bool:
        """Mark the plate complete when every field of ``keys`` is done; returns whether it is."""
        records = [self.fields.get(k, {}) for k in keys]
        complete = bool(keys) and all(r.get("status") == Status.DONE and r.get("sha256") for r in records)
        digest = _shards_digest(keys, records) if complete else None
        self.complete, self.shards_digest, self.dirty = complete, digest, True
        return complete


def _shards_digest(keys: list[str], records: list[Mapping[str, Any]]) -> str:
    text = "\n".join(f"{k}\t{r.get('sha256')}\t{r.get('size')}" for k, r in zip(keys, records, strict=True))
    return hashlib.sha256(text.encode()).hexdigest()


class FieldRecords:
    """The field records of a run directory, one :class:`PlateRecord` per plate, loaded when first asked for.

    Parameters
    ----------
    root
        The run directory.
    flush_interval
        Seconds between two writes of one plate's file while its fields finish.
    """

    def __init__(self, root: RunPath, *, flush_interval: float = 2.0) -> None:
        self.root = root
        self.flush_interval = flush_interval
        self._plates: dict[str, PlateRecord] = {}

    def path(self, plate: str) -> RunPath:
        return self.root / Files.RECORDS / f"{plate}.json"

    def log_path(self, plate: str) -> RunPath:
        return self.root / Files.RECORDS / f"{plate}.log"

    def plate(self, name: str) -> PlateRecord:
        """The record of plate ``name``: its last whole write, then its log (empty when there is none yet;
        a damaged one is kept aside)."""
        if name not in self._plates:
            record = PlateRecord(name, self._read(name))
            for change in self._log(name):
                record.replay(change)
            record.changes, record.dirty = [], False
            self._plates[name] = record
        return self._plates[name]

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.path(name)
        try:
            data = json.loads(path.read_bytes())
            if isinstance(data, dict) and data.get("plate") == name:
                return data
            problem = "not the record of this plate"
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            problem = f"not readable JSON ({exc})"
        aside = self.root / Files.RECORDS / f"{name}.json.damaged-{_dt.datetime.now():%Y%m%dT%H%M%S}"
        try:
            path.move(aside)
        except OSError:
            pass
        log.warning("%s is damaged (%s); kept as %s, and its fields are checked against their shards", path,
                    problem, aside.name)
        return None

    def _log_parts(self, name: str) -> list[RunPath]:
        """The plate's log: one file on a file system, one object per write on object storage (in order)."""
        path = self.log_path(name)
        if path.is_local:
            return [path] if path.exists() else []
        folder = self.root / Files.RECORDS
        try:
            keys = sorted(path.fs.glob(f"{folder._key}/{name}.log.*"))
        except FileNotFoundError:
            return []
        return [folder / key.rsplit("/", 1)[-1] for key in keys]

    def _log(self, name: str) -> Iterator[dict[str, Any]]:
        for part in self._log_parts(name):
            try:
                text = part.read_bytes().decode(errors="replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                try:
                    change = json.loads(line)
                except ValueError:  # the last line of a write cut short: that record was not written
                    continue
                if isinstance(change, dict) and "record" in change:
                    yield change

    def known(self) -> Iterator[str]:
        """The plates whose records are loaded (those this run has touched)."""
        return iter(list(self._plates))

    def field(self, fid: FieldId) -> dict[str, Any]:
        return dict(self.plate(fid.plate).fields.get(fid.key, {}))

    def set(self, fid: FieldId, record: Mapping[str, Any]) -> None:
        self.plate(fid.plate).put(fid.key, record)

    def set_segmented(self, fid: FieldId, record: Mapping[str, Any]) -> None:
        self.plate(fid.plate).put_segmented(fid.key, record)

    def flush(self, *, force: bool = False) -> None:
        """Append the records that changed to their plates' logs (each plate at most every ``flush_interval``
        seconds unless ``force``): the bytes written are those of the new records only."""
        now = time.monotonic()
        for plate in self._plates.values():
            if plate.changes and (force or now - plate.written >= self.flush_interval):
                lines = "".join(json.dumps(change, default=str) + "\n" for change in plate.changes).encode()
                path = self.log_path(plate.name)
                if path.is_local:
                    path.local.parent.mkdir(parents=True, exist_ok=True)
                    with open(path.local, "ab") as handle:
                        handle.write(lines)
                else:
                    (self.root / Files.RECORDS / f"{plate.name}.log.{time.time_ns():020d}").write_bytes(lines)
                plate.changes, plate.dirty, plate.written = [], False, now

    def compact(self, name: str) -> None:
        """Write a plate's records whole (``records/<plate>.json``) and drop its log: when the plate ends."""
        plate = self.plate(name)
        self.path(name).write_bytes(json.dumps(plate.to_dict(), indent=0, default=str).encode())
        for part in self._log_parts(name):
            part.remove()
        plate.changes, plate.dirty = [], False

    def adopt(self, fields: Mapping[str, Mapping[str, Any]]) -> None:
        """Take the ``fields`` of a manifest written before records were kept per plate (keys
        ``"<plate>/<well>/<field>"``)."""
        for key, record in fields.items():
            self.plate(str(key).split("/", 1)[0]).put(str(key), record)
