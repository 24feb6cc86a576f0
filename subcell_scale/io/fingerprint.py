"""A cheap fingerprint of the pixels and labels a field's result was computed from.

A rerun that keeps finished fields must notice when their input changed on disk: a re-acquired
field, a repaired chunk, labels written again by a new segmentation. Hashing the pixels would cost
as much as reading them; instead :func:`field_fingerprint` digests the name, size and modification
stamp of every object stored under the field's group (its image at every level, and the label
images named; other label images are left out, so adding one does not change the field), which one
listing returns on a local disk and on object storage alike. A rewrite changes the stamp (and on
object storage the ETag, a hash of the content), so the fingerprint changes; reading the plate does
not. :func:`plate_fingerprints` gives every field's from one listing of the plate, reading no
metadata, so a resumed screen checks a plate in a few requests.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import PlateFormatError

if TYPE_CHECKING:
    from .plate import Plate

# stamps fsspec file systems report, most telling first: local mtime, S3 ETag and LastModified,
# GCS md5Hash and updated, Azure etag and last_modified, the memory file system's created
_STAMPS = ("mtime", "ETag", "etag", "md5Hash", "LastModified", "last_modified", "updated", "created")


def _stamp(info: dict[str, Any]) -> str:
    return ";".join(f"{key}={info[key]}" for key in _STAMPS if info.get(key) is not None)


def field_fingerprint(plate: Plate, well: str, field: str | int, *, labels: str | Sequence[str] = ()) -> str:
    """A hex digest that changes when a field's image or its ``labels`` files change on disk.

    Parameters
    ----------
    plate
        An opened plate (local path or fsspec URL; its ``storage_options`` are used).
    well, field
        The field.
    labels
        Label image name(s) whose files are included. A name the field does not have yet is recorded
        as absent, so the fingerprint also changes when that label image appears. Compute the
        fingerprint once the field's labels exist (after segmentation wrote them).

    Returns
    -------
    str
        sha256 hex digest of (key, size, stamp) of every object under the field's group but other
        label images. Equal fingerprints mean the same files with the same sizes and modification
        stamps; a rewrite that keeps both (within the file system's timestamp resolution, and without
        an ETag) goes unnoticed.

    Raises
    ------
    PlateFormatError
        The store cannot be listed.
    PlateNotFoundError
        The well does not exist.
    """
    if str(field) not in plate.fields(well):
        plate.n_levels(well, field)  # raises, naming the field and the ones the well has
    prefix = f"{plate.well_path(well)}/{field}"
    return _digest(_listing(plate, prefix, where=f"{well}/{field}").get(prefix, []), labels)


def plate_fingerprints(plate: Plate, sites: Iterable[tuple[str, str]], *, labels: str | Sequence[str] = ()
                       ) -> dict[tuple[str, str], str]:
    """:func:`field_fingerprint` of many fields of a plate from one listing of the plate's store.

    Raises
    ------
    PlateFormatError
        The store cannot be listed.
    """
    sites = [(well, str(field)) for well, field in sites]
    entries = _listing(plate, "", where="the plate")
    return {(well, field): _digest(entries.get(f"{plate.well_path(well)}/{field}", []), labels)
            for well, field in sites}


def _digest(entries: list[tuple[str, Any, str]], labels: str | Sequence[str]) -> str:
    """The digest of a field's (relative key, size, stamp) entries, other label images left out."""
    names = [labels] if isinstance(labels, str) else list(labels)
    wanted = tuple(f"labels/{name}/" for name in names)
    digest = hashlib.sha256()
    for name in names:  # a label image that appears or goes changes the fingerprint
        present = any(rel.startswith(f"labels/{name}/") for rel, _, _ in entries)
        digest.update(f"labels/{name}={'present' if present else 'absent'}\n".encode())
    for rel, size, stamp in sorted(entries):
        if rel.startswith("labels/") and not rel.startswith(wanted):
            continue
        digest.update(f"{rel}\t{size}\t{stamp}\n".encode())
    return digest.hexdigest()


def _listing(plate: Plate, prefix: str, *, where: str) -> dict[str, list[tuple[str, Any, str]]]:
    """Every object under ``prefix`` of the plate (one listing), grouped by field group (``row/col/field``):
    field group -> (key relative to it, size, stamp)."""
    from .plate import local_path

    fields: dict[str, list[tuple[str, Any, str]]] = defaultdict(list)
    try:
        if "://" in plate.path and not plate.path.startswith("file://"):
            import fsspec.core

            fs, root = fsspec.core.url_to_fs(plate.path, **(plate.storage_options or {}))
            base = f"{root.rstrip('/')}/{prefix}".rstrip("/")
            for key, info in fs.find(base, detail=True).items():
                _add(fields, key[len(root.rstrip("/")) + 1:], info.get("size"), _stamp(info))
        else:
            for key, stat in _local_files(local_path(plate.path), prefix):
                _add(fields, key, stat.st_size, _stamp({"mtime": stat.st_mtime}))
    except OSError as exc:
        msg = f"{plate.path} {where}: cannot list the field's files ({type(exc).__name__}: {exc})"
        raise PlateFormatError(msg) from exc
    return fields


def _local_files(root: str, prefix: str) -> Iterable[tuple[str, os.stat_result]]:
    """(key relative to ``root`` with ``/``, stat) of every file under ``root/prefix``: one scandir per
    folder, keys built as the walk goes (a plate has thousands of chunk folders)."""
    stack = [(os.path.join(root, prefix) if prefix else root, f"{prefix.strip('/')}/" if prefix.strip("/") else "")]
    while stack:
        folder, key = stack.pop()
        try:
            entries = os.scandir(folder)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if entry.is_dir():
                    if not entry.is_symlink():  # as os.walk: linked folders are not followed
                        stack.append((entry.path, f"{key}{entry.name}/"))
                else:
                    yield f"{key}{entry.name}", entry.stat()


def _add(fields: dict[str, list[tuple[str, Any, str]]], key: str, size: Any, stamp: str) -> None:
    parts = key.split("/")
    if len(parts) > 3:  # row/col/field/...: a file of a field's group
        fields["/".join(parts[:3])].append(("/".join(parts[3:]), size, stamp))
