"""A cheap fingerprint of the pixels and labels a field's result was computed from.

A rerun that keeps finished fields must notice when their input changed on disk: a re-acquired
field, a repaired chunk, labels written again by a new segmentation. Hashing the pixels would cost
as much as reading them; instead :func:`field_fingerprint` digests the name, size and modification
stamp of every object stored under the arrays the field reads (the image level and the label
image level, chunk files and array metadata), which one listing per array returns on a local disk
and on object storage alike. A rewrite changes the stamp (and on object storage the ETag, a hash of
the content), so the fingerprint changes; reading the plate does not.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import PlateFormatError

if TYPE_CHECKING:
    from .plate import Plate

# stamps fsspec file systems report, most telling first: local mtime, S3 ETag and LastModified,
# GCS md5Hash and updated, Azure etag and last_modified, the memory file system's created
_STAMPS = ("mtime", "ETag", "etag", "md5Hash", "LastModified", "last_modified", "updated", "created")


def _stamp(info: dict[str, Any]) -> str:
    return ";".join(f"{key}={info[key]}" for key in _STAMPS if info.get(key) is not None)


def field_fingerprint(plate: Plate, well: str, field: str | int, *, labels: str | Sequence[str] = (),
                      level: int = 0) -> str:
    """A hex digest that changes when a field's image or label files change on disk.

    Parameters
    ----------
    plate
        An opened plate (local path or fsspec URL; its ``storage_options`` are used).
    well, field
        The field.
    labels
        Label image name(s) whose level-``level`` array is included. A name the field does not have
        yet is recorded as absent, so the fingerprint also changes when that label image appears.
        Compute the fingerprint once the field's labels exist (after segmentation wrote them).
    level
        The resolution level the result was computed from (0: full resolution).

    Returns
    -------
    str
        sha256 hex digest of (key, size, stamp) of every object under those arrays. Equal
        fingerprints mean the same files with the same sizes and modification stamps; a rewrite
        that keeps both (within the file system's timestamp resolution, and without an ETag) goes
        unnoticed.

    Raises
    ------
    PlateFormatError
        The store cannot be listed.
    PlateNotFoundError
        The well, field or level does not exist.
    """
    import fsspec.core

    from .plate import local_path

    names = [labels] if isinstance(labels, str) else list(labels)
    arrays = [("image", plate.level_path(well, field, level))]
    existing = set(plate.label_names(well, field))
    for name in names:
        arrays.append((f"labels/{name}", plate.level_path(well, field, level, label=name) if name in existing else None))
    path = plate.path if "://" in plate.path and not plate.path.startswith("file://") else local_path(plate.path)
    digest = hashlib.sha256()
    try:
        fs, root = fsspec.core.url_to_fs(path, **(plate.storage_options or {}))
        for what, array in arrays:
            digest.update(f"{what}={array}\n".encode())
            if array is None:
                continue
            prefix = f"{root.rstrip('/')}/{array}"
            for name, info in sorted(fs.find(prefix, detail=True).items()):
                digest.update(f"{name[len(prefix):]}\t{info.get('size')}\t{_stamp(info)}\n".encode())
    except OSError as exc:
        msg = f"{plate.path} {well}/{field}: cannot list the field's files ({type(exc).__name__}: {exc})"
        raise PlateFormatError(msg) from exc
    return digest.hexdigest()


def plate_fingerprints(plate: Plate, sites: Sequence[tuple[str, str]], *, labels: str | Sequence[str] = (),
                       level: int = 0) -> dict[tuple[str, str], str]:
    """:func:`field_fingerprint` of many fields of a plate from one listing of the plate's store.

    A resumed screen checks every finished field of a plate this way with one recursive listing (a
    few requests per thousand objects on object storage) instead of one listing per field. The
    digests equal :func:`field_fingerprint`'s.

    Raises
    ------
    PlateFormatError
        The store cannot be listed.
    """
    import fsspec.core

    from .plate import local_path

    names = [labels] if isinstance(labels, str) else list(labels)
    path = plate.path if "://" in plate.path and not plate.path.startswith("file://") else local_path(plate.path)
    try:
        fs, root = fsspec.core.url_to_fs(path, **(plate.storage_options or {}))
        root = root.rstrip("/")
        listing = sorted(fs.find(root, detail=True).items())
    except OSError as exc:
        msg = f"{plate.path}: cannot list the plate's files ({type(exc).__name__}: {exc})"
        raise PlateFormatError(msg) from exc
    keys = [name for name, _ in listing]
    out = {}
    for well, field in sites:
        arrays = [("image", plate.level_path(well, field, level))]
        existing = set(plate.label_names(well, field))
        for name in names:
            arrays.append((f"labels/{name}", plate.level_path(well, field, level, label=name)
                           if name in existing else None))
        digest = hashlib.sha256()
        for what, array in arrays:
            digest.update(f"{what}={array}\n".encode())
            if array is None:
                continue
            prefix = f"{root}/{array}"
            lo = bisect.bisect_left(keys, prefix + "/")
            hi = bisect.bisect_left(keys, prefix + "0")  # "0" sorts just after "/"
            for name, info in listing[lo:hi]:
                digest.update(f"{name[len(prefix):]}\t{info.get('size')}\t{_stamp(info)}\n".encode())
        out[(well, str(field))] = digest.hexdigest()
    return out

