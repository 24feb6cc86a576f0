"""One exception family for every problem a user can cause or meet.

Each class also inherits the builtin that fits, so ``except FileNotFoundError`` keeps working, and
every message names the place (file, well, field, key) and what was expected.
"""

from __future__ import annotations


class SubcellScaleError(Exception):
    """Base class of every error subcell-scale raises on purpose."""


class PlateNotFoundError(SubcellScaleError, FileNotFoundError):
    """A plate, well, field or level that should exist does not."""


class PlateFormatError(SubcellScaleError, ValueError):
    """A store exists but is not a readable NGFF HCS plate (metadata, axes, levels, chunks)."""


class WellNameError(SubcellScaleError, ValueError):
    """A well name that is not row letters followed by a column number ("B03")."""


class PlatemapError(SubcellScaleError, ValueError):
    """A platemap row or file that cannot be joined to the plate."""


class ChannelMismatchError(SubcellScaleError, ValueError):
    """The plate's channels do not provide what a model or preset needs."""


class CheckpointError(SubcellScaleError, ValueError):
    """A weights file that is not the expected state_dict (keys, shapes, format, safety)."""


class DownloadError(SubcellScaleError, OSError):
    """Fetching or verifying published weights failed."""


class ConfigError(SubcellScaleError, ValueError):
    """An option, preset or config file value that cannot be used."""


class RunDirectoryError(SubcellScaleError, OSError):
    """An output directory that cannot be used: not writable, locked by another run, damaged."""


class ProfilingError(SubcellScaleError, ValueError):
    """Profiles or metrics asked for with inputs that cannot give them (no reference rows, no pairs)."""
