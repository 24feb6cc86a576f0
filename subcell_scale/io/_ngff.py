"""Small readers of NGFF metadata shared by the plate reader, writers and validator.

NGFF 0.4 (Zarr v2) keeps its keys at the top of ``.zattrs``; 0.5 (Zarr v3) nests them under
``attributes.ome``. Everything here hides that difference so the rest of ``io`` reads one shape.
"""

from __future__ import annotations

from typing import Any

import zarr

# UDUNITS-2 length units NGFF allows, as micrometres per unit.
LENGTH_UNITS_UM = {
    "angstrom": 1e-4,
    "attometer": 1e-12,
    "centimeter": 1e4,
    "decimeter": 1e5,
    "exameter": 1e24,
    "femtometer": 1e-9,
    "foot": 304800.0,
    "gigameter": 1e15,
    "hectometer": 1e8,
    "inch": 25400.0,
    "kilometer": 1e9,
    "megameter": 1e12,
    "meter": 1e6,
    "micrometer": 1.0,
    "mile": 1.609344e9,
    "millimeter": 1e3,
    "nanometer": 1e-3,
    "parsec": 3.0856775814913673e22,
    "petameter": 1e21,
    "picometer": 1e-6,
    "terameter": 1e18,
    "yard": 914400.0,
    "yoctometer": 1e-18,
    "yottameter": 1e30,
    "zeptometer": 1e-15,
    "zettameter": 1e27,
    # spellings met in real files
    "micron": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
}

SUPPORTED_AXES = ("t", "c", "z", "y", "x")


def ome_attrs(node: zarr.Group | zarr.Array) -> dict[str, Any]:
    """The NGFF metadata of a node as one dict, for Zarr v2 (0.4) and v3 (0.5) alike."""
    attrs = node.attrs.asdict()
    if node.metadata.zarr_format == 3:
        ome = attrs.get("ome")
        return dict(ome) if isinstance(ome, dict) else {}
    return attrs


def set_ome_attrs(node: zarr.Group, values: dict[str, Any], *, version: str) -> None:
    """Merge ``values`` into a node's NGFF metadata where the node's format keeps it."""
    if node.metadata.zarr_format == 3:
        ome = ome_attrs(node)
        ome.update(values)
        ome["version"] = version
        node.attrs["ome"] = ome
    else:
        node.attrs.update(values)


def ngff_version(attrs: dict[str, Any], key: str) -> str | None:
    """The NGFF version of a node: ``ome.version`` (0.5) or the object's own ``version`` (0.4)."""
    if "version" in attrs:
        return str(attrs["version"])
    obj = attrs.get(key)
    if isinstance(obj, dict) and "version" in obj:
        return str(obj["version"])
    if isinstance(obj, list) and obj and isinstance(obj[0], dict) and "version" in obj[0]:
        return str(obj[0]["version"])
    return None


def axis_names(axes: list[Any]) -> list[str]:
    """Axis names from NGFF ``axes`` (dicts in 0.4+, plain strings in 0.3)."""
    return [str(a["name"] if isinstance(a, dict) else a).lower() for a in axes]


def um_per_unit(unit: str | None) -> float | None:
    """Micrometres per ``unit``; None when the unit is absent or not a length."""
    if unit is None:
        return None
    return LENGTH_UNITS_UM.get(str(unit).strip().lower())


def dataset_scale(multiscale: dict[str, Any], level: int) -> list[float] | None:
    """The total ``scale`` of one level: the dataset's scale times the multiscale-wide scale."""
    datasets = multiscale.get("datasets", [])
    scale: list[float] | None = None
    for transform in datasets[level].get("coordinateTransformations", []) or []:
        if transform.get("type") == "scale" and "scale" in transform:
            scale = [float(v) for v in transform["scale"]]
    for transform in multiscale.get("coordinateTransformations", []) or []:
        if transform.get("type") == "scale" and "scale" in transform and scale is not None:
            scale = [a * float(b) for a, b in zip(scale, transform["scale"])]
    return scale


def write_level(group: zarr.Group, path: str, data: Any, chunks: tuple[int, ...], axes: list[str]) -> zarr.Array:
    """Write one resolution level as NGFF expects for the group's format.

    Zarr v3 (0.5) arrays carry ``dimension_names``; Zarr v2 (0.4) arrays use "/" chunk keys. Chunks
    are Blosc-LZ4 with bit shuffle: on microscopy images about twice as fast as zarr's default
    zstd and no larger, and readable by every Zarr implementation. Every chunk is stored, even one
    that holds only zeros (zarr leaves those out by default), so a chunk missing from a plate
    written here always means damage, which the reader reports instead of reading zeros.
    """
    chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, data.shape))
    if group.metadata.zarr_format == 3:
        from zarr.codecs import BloscCodec

        array = group.create_array(path, shape=data.shape, dtype=data.dtype, chunks=chunks, dimension_names=axes,
                                   compressors=BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), overwrite=True,
                                   config={"write_empty_chunks": True})
    else:
        from numcodecs import Blosc

        array = group.create_array(path, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                   chunk_key_encoding={"name": "v2", "separator": "/"},
                                   compressors=Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE), overwrite=True,
                                   config={"write_empty_chunks": True})
    array[...] = data
    return array


def level_transforms(shapes: list[tuple[int, ...]], scale0: list[float]) -> list[list[dict[str, Any]]]:
    """Per-level ``scale`` and ``translation`` so every level covers the same physical area.

    Level pixel centres move by half a (larger) pixel, as ome-zarr-py writes them.
    """
    transforms = []
    for shape in shapes:
        factors = [full / lvl for full, lvl in zip(shapes[0], shape)]
        scale = [f * s for f, s in zip(factors, scale0)]
        translation = [(f - 1.0) / 2.0 * s for f, s in zip(factors, scale0)]
        transforms.append([{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}])
    return transforms
