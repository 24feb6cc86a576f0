"""OME-Zarr HCS plates in and out: open lazily, write fields and labels, platemaps, converters.

Reading goes through :func:`open_plate` (metadata only until pixels are asked for); writing goes
through :class:`PlateWriter` and :func:`write_labels`. Well names are normalised to "B03" everywhere.
"""

from __future__ import annotations

import importlib

from .fingerprint import field_fingerprint
from .labels import labels_writable, write_labels
from .plate import Plate, open_plate
from .platemap import PlatemapWarning, join_platemap, read_platemap
from .validate import validate_plate
from .wells import normalize_well_name, parse_well_name, well_name
from .writer import PlateWriter

__all__ = [
    "Plate",
    "PlateWriter",
    "PlatemapWarning",
    "field_fingerprint",
    "join_platemap",
    "labels_writable",
    "make_demo_plate",
    "open_plate",
    "read_platemap",
    "validate_plate",
    "write_labels",
    "normalize_well_name",
    "parse_well_name",
    "well_name",
]


def __getattr__(name: str):
    # the demo generator pulls in scikit-image drawing; load it only when asked for
    if name == "make_demo_plate":
        return importlib.import_module(f"{__name__}.demo").make_demo_plate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
