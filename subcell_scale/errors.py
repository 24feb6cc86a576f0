"""One exception family for every problem a user can cause or meet.

Each class also inherits the builtin that fits, so ``except FileNotFoundError`` keeps working, and
every message names the place (file, well, field, key) and what was expected.
"""

from __future__ import annotations

import errno

__all__ = [
    "ChannelMismatchError", "CheckpointError", "ConfigError", "DownloadError", "NonFinitePixelsError",
    "PlateFormatError", "PlateNotFoundError", "PlatemapError", "ProfilingError", "ResourceError",
    "RunDirectoryError", "SubcellScaleError", "UsageError", "WellNameError", "resource_error",
]


class SubcellScaleError(Exception):
    """Base class of every error subcell-scale raises on purpose.

    ``retriable`` says whether running the same work again could succeed: a field that failed on a
    damaged chunk or a full disk is retried, one that lacks a channel or its labels is not.
    """

    retriable: bool = True


class PlateNotFoundError(SubcellScaleError, FileNotFoundError):
    """A plate, well, field or level that should exist does not."""

    retriable = False


class PlateFormatError(SubcellScaleError, ValueError):
    """A store exists but is not a readable NGFF HCS plate (metadata, axes, levels, chunks)."""


class NonFinitePixelsError(PlateFormatError):
    """A field holding NaN or infinite pixels, which would give NaN embeddings (``nonfinite="fail"``)."""

    retriable = False


class WellNameError(SubcellScaleError, ValueError):
    """A well name that is not row letters followed by a column number ("B03")."""

    retriable = False


class PlatemapError(SubcellScaleError, ValueError):
    """A platemap row or file that cannot be joined to the plate."""

    retriable = False


class ChannelMismatchError(SubcellScaleError, ValueError):
    """The plate's channels do not provide what a model or preset needs."""

    retriable = False


class CheckpointError(SubcellScaleError, ValueError):
    """A weights file that is not the expected state_dict (keys, shapes, format, safety)."""

    retriable = False


class DownloadError(SubcellScaleError, OSError):
    """Fetching or verifying published weights failed."""


class ConfigError(SubcellScaleError, ValueError):
    """An option, preset or config file value that cannot be used."""

    retriable = False


class UsageError(ConfigError):
    """A command used the wrong way: an option missing or contradicting another (exit status 2)."""


class RunDirectoryError(SubcellScaleError, OSError):
    """An output directory that cannot be used: not writable, locked by another run, damaged."""


class ProfilingError(SubcellScaleError, ValueError):
    """Profiles or metrics asked for with inputs that cannot give them (no reference rows, no pairs)."""


class ResourceError(SubcellScaleError, OSError):
    """The machine ran short of something (disk space, quota, file size, permission, memory) at a named path."""


_RESOURCES = {
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system", errno.EMFILE: "too many open files",
}
"""Errors of the machine rather than of the input: what ran short, in words."""


def resource_error(exc: BaseException, path: object, doing: str) -> ResourceError | None:
    """``exc`` as a :class:`ResourceError` naming what ran short and where, or None when it is not one.

    ``doing`` says what was being done (``"writing the cells store"``); the path is the error's own file
    when it names one, else ``path``.
    """
    if isinstance(exc, MemoryError):
        what = "out of memory"
    elif isinstance(exc, OSError) and exc.errno in _RESOURCES:
        what = _RESOURCES[exc.errno]
    else:
        return None
    where = getattr(exc, "filename", None) or path
    msg = f"{what} {doing}" + (f": {where}" if where is not None else "")
    error = ResourceError(msg)
    error.errno = getattr(exc, "errno", None)
    error.__cause__ = exc
    return error
