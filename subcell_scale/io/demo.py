"""Deterministic synthetic demo plates with a platemap, for tutorials, tests and benchmarks.

:func:`make_demo_plate` writes NGFF HCS plates whose every answer is known: each well holds one compound
(or DMSO), each compound belongs to a mechanism of action (MoA) that gives its cells a recognisable
pattern, and the ground-truth ``cells`` and ``nuclei`` label images travel inside the plate. What a real
screen adds on top is there too, so that normalisation and metrics have something to correct and
measure: replicate wells within and across plates at shuffled positions, per-plate intensity gain and
dark level, per-plate uneven illumination, cell-to-cell variation, touching cells, shot and read noise.

Two small layouts make the demo (``geometry="demo"``), quick to write and to embed:

- ``"hpa"`` (default): HPA-like confocal immunofluorescence at 0.32 um/px, channels ``microtubules``,
  ``er``, ``dna``, ``protein``; a compound moves the protein to a subcellular compartment.
- ``"cellpainting"``: widefield Cell Painting at 0.598 um/px, channels ``DNA``, ``ER``, ``RNA``,
  ``AGP``, ``Mito``; a compound changes the stains its MoA is known to change.

Two more have the geometry of real screens, for plate-scale benchmarks (reading, segmentation,
cropping and embedding cost what they cost on real plates):

- ``geometry="jump"``: JUMP Cell Painting, 1080 x 1080 fields at 0.598 um/px, about 250 cells per
  field, 9 fields per well, the same five stains and phenotypes drawn to look like JUMP's widefield
  images (confluent cells, ER/RNA crosstalk, perinuclear mitochondria);
- ``geometry="hpa"``: HPA Cell Atlas confocal, 2048 x 2048 fields at 0.08 um/px, about 20 cells per
  field, the four HPA channels and protein patterns at full confocal resolution.

Large plates are written by several processes at once (``processes=``), each synthesizing and
writing whole fields. The same arguments give byte-identical plates whatever the number of processes:
every field draws from its own random stream keyed by (seed, plate, well, field), so nothing depends
on the order of work.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._constants import DemoSize, Files
from .._folders import make_folder
from ..errors import ConfigError
from . import synthetic
from .synthetic import Phenotype
from .wells import row_name, well_name

if TYPE_CHECKING:
    from .writer import PlateWriter

logger = logging.getLogger(__name__)

_WORKERS = 2  # threads computing fields ahead of the writer
_LEVELS = 2  # resolution levels of every field

Geometry = Literal["demo", "jump", "hpa"]
GEOMETRIES = ("demo", "jump", "hpa")

DMSO = "DMSO"
NEGCON = "negcon"
TREATMENT = "trt"
PLATEMAP_COLUMNS = ("plate", "well", "compound", "moa", "control_type")

# Compound j of a MoA keeps the MoA's pattern with its own strength, brightness and structure size.
_COMPOUND_VARIANTS = ((0.95, 1.0, 1.0), (0.8, 1.3, 0.85), (0.7, 0.8, 1.2))


@dataclass(frozen=True)
class Moa:
    """A mechanism of action: the phenotype pattern its compounds share and their name stem."""

    name: str
    pattern: str
    code: str

    def compound(self, j: int) -> tuple[str, Phenotype]:
        strength, intensity, size = _COMPOUND_VARIANTS[j]
        return f"{self.code}-{j + 1}", Phenotype(self.pattern, strength, intensity, size)


@dataclass(frozen=True)
class CellShape:
    """How :func:`synthetic.layout_cells` draws a layout's cells (see its parameters).

    ``enlarged_nucleus_fraction`` replaces ``nucleus_fraction`` for compounds that enlarge nuclei.
    The defaults are the demo plates' cells; confluent screens spread cells into their neighbours.
    """

    nucleus_fraction: tuple[float, float] = (0.33, 0.45)
    enlarged_nucleus_fraction: tuple[float, float] = (0.4, 0.52)
    elongation: tuple[float, float] = (0.0, 0.45)
    roughness: float = 0.1
    touching: float = 0.5
    spread: float = 1.0


@dataclass(frozen=True)
class DemoLayout:
    """Everything that differs between the kinds of synthetic plates: stains, scale, look and size.

    ``field_size`` and ``fields_per_well`` are the defaults of :func:`make_demo_plate`; fields are
    stored in chunks of up to ``max_chunk`` pixels a side.
    """

    name: str
    channels: tuple[str, ...]
    pixel_size: float
    cell_diameter_um: tuple[float, float]
    cells_per_field: int
    photons: tuple[float, ...]
    plate_prefix: str
    moas: tuple[Moa, ...]
    render: Callable[[synthetic.CellLayout, Phenotype, float, np.random.Generator], np.ndarray]
    cell_shape: CellShape = CellShape()
    field_size: int = 512
    fields_per_well: int = DemoSize.FIELDS
    max_chunk: int = 1024


HPA = DemoLayout(
    name="hpa",
    channels=synthetic.HPA_CHANNELS,
    pixel_size=0.32,
    cell_diameter_um=(25.0, 45.0),
    cells_per_field=10,
    photons=(1400.0, 1600.0, 2200.0, 1500.0),
    plate_prefix="demo-plate",
    # ordered so that small plates still get the most distinct patterns first
    moas=(
        Moa("nuclear import", "nucleoplasm", "NUC"),
        Moa("cytosolic retention", "cytosol", "CYT"),
        Moa("mitochondrial import", "mitochondria", "MIT"),
        Moa("ER retention", "endoplasmic_reticulum", "ERR"),
        Moa("membrane anchoring", "plasma_membrane", "MEM"),
        Moa("nucleolar sequestration", "nucleoli", "NLO"),
        Moa("Golgi trapping", "golgi", "GLG"),
        Moa("speckle condensation", "nuclear_speckles", "SPK"),
        Moa("endocytic trafficking", "vesicles", "VES"),
    ),
    render=synthetic.hpa_field,
)

CELLPAINTING = DemoLayout(
    name="cellpainting",
    channels=synthetic.CELLPAINTING_CHANNELS,
    pixel_size=0.598,
    cell_diameter_um=(15.0, 30.0),
    cells_per_field=40,
    photons=(2600.0, 1400.0, 1400.0, 1200.0, 1200.0),
    plate_prefix="demo-cp-plate",
    moas=(
        Moa("mitochondrial uncoupling", "mito_fragmentation", "UNC"),
        Moa("ER stress", "er_stress", "ERS"),
        Moa("actin modulation", "actin_rearrangement", "ACT"),
        Moa("RNA polymerase I inhibition", "nucleolar_stress", "POL"),
        Moa("CDK inhibition", "nuclear_enlargement", "CDK"),
        Moa("Golgi disruption", "golgi_dispersal", "GOL"),
    ),
    render=synthetic.cellpainting_field,
)

JUMP = DemoLayout(
    name="jump",
    channels=synthetic.CELLPAINTING_CHANNELS,
    pixel_size=0.598,
    cell_diameter_um=(24.0, 40.0),
    cells_per_field=250,
    photons=(6000.0, 5000.0, 5000.0, 3000.0, 4000.0),
    plate_prefix="jump-plate",
    moas=CELLPAINTING.moas,
    render=synthetic.jump_field,
    # nuclei of 13-21 um in cells spread to about 37 um that cover two thirds of the field, as in
    # JUMP's U2OS fields (benchmarks/synthetic_vs_real.py compares them)
    cell_shape=CellShape(nucleus_fraction=(0.44, 0.58), enlarged_nucleus_fraction=(0.52, 0.66),
                         elongation=(0.1, 0.7), roughness=0.12, touching=0.6, spread=1.35),
    field_size=1080,
    fields_per_well=9,
    max_chunk=4096,
)

HPA_CONFOCAL = DemoLayout(
    name="hpa-confocal",
    channels=synthetic.HPA_CHANNELS,
    pixel_size=0.08,
    cell_diameter_um=(24.0, 40.0),
    cells_per_field=20,
    photons=HPA.photons,
    plate_prefix="hpa-plate",
    moas=HPA.moas,
    render=synthetic.hpa_confocal_field,
    # cells of about 35 um (380-440 px) with 12-16 um nuclei, as in the HPA's 2048-px fields; the
    # classical segmenter scores on them as on the real ones (F1 about 0.75 with Otsu, 0.8 with Li)
    cell_shape=CellShape(nucleus_fraction=(0.4, 0.55), enlarged_nucleus_fraction=(0.48, 0.62),
                         elongation=(0.1, 0.6), roughness=0.12, touching=0.6, spread=1.3),
    field_size=2048,
    fields_per_well=4,
    max_chunk=4096,
)

LAYOUTS = {layout.name: layout for layout in (HPA, CELLPAINTING, JUMP, HPA_CONFOCAL)}


def layout_for(geometry: Geometry = "demo", *, cellpainting: bool = False) -> DemoLayout:
    """The layout :func:`make_demo_plate` writes for a geometry (``"jump"`` is always Cell Painting)."""
    if geometry not in GEOMETRIES:
        msg = f"demo plate: geometry must be one of {', '.join(map(repr, GEOMETRIES))}, got {geometry!r}"
        raise ConfigError(msg)
    if geometry == "jump":
        return JUMP
    if geometry == "hpa":
        if cellpainting:
            msg = "demo plate: geometry 'hpa' is the 4-channel HPA layout; use geometry 'jump' for Cell Painting"
            raise ConfigError(msg)
        return HPA_CONFOCAL
    return CELLPAINTING if cellpainting else HPA


# ----------------------------------------------------------------------------------------------------
# plate design


def plate_wells(n_wells: int) -> list[str]:
    """The first ``n_wells`` wells of a 96-well plate (384 above 96), row by row: A01, A02, ..."""
    _, cols = _plate_format(n_wells)
    return [well_name(row_name(i // cols), i % cols + 1) for i in range(n_wells)]


def _plate_format(n_wells: int) -> tuple[int, int]:
    return (8, 12) if n_wells <= 96 else (16, 24)


def design_platemap(layout: DemoLayout, *, n_plates: int, n_wells: int, seed: int) -> pd.DataFrame:
    """Assign a compound to every well of every plate.

    About one well in six per plate is DMSO (at least two). Treatments take as many compounds as give
    each about four replicate wells, spread over MoAs two (up to three) compounds at a time; the wells
    of each plate are shuffled with the seed so a compound sits at different positions on each plate.

    Returns
    -------
    pandas.DataFrame
        Columns ``plate``, ``well``, ``compound``, ``moa``, ``control_type`` (``negcon`` for DMSO,
        ``trt`` otherwise), one row per well, plates in order and wells in plate order.
    """
    _check_counts(n_plates=n_plates, n_wells=n_wells)
    n_dmso = max(2, round(n_wells / 6))
    n_trt = n_wells - n_dmso
    total_trt = n_plates * n_trt
    if total_trt < 2:
        msg = (f"{n_plates} plate(s) of {n_wells} wells leave {total_trt} treatment well(s) after {n_dmso} DMSO "
               "wells per plate; at least 2 are needed so a compound has a replicate (use more wells or plates)")
        raise ConfigError(msg)
    compounds = _compounds(layout, total_trt)
    slots = [compounds[i % len(compounds)] for i in range(total_trt)]
    names = [f"{layout.plate_prefix}-{p + 1}" for p in range(n_plates)]
    wells = plate_wells(n_wells)
    rng = np.random.default_rng([seed, 0])
    placements: list[list[tuple[str, str]]] = []
    for attempt in range(100):
        placements = []
        for p in range(n_plates):
            content = [(DMSO, "")] * n_dmso + slots[p * n_trt:(p + 1) * n_trt]
            order = rng.permutation(n_wells)
            placements.append([content[i] for i in order])
        if n_plates == 1 or _positions_differ(placements):
            break
        logger.debug("design attempt %d put a compound at the same wells on two plates; reshuffling", attempt)
    rows = []
    for name, placement in zip(names, placements):
        for well, (compound, moa) in zip(wells, placement):
            control = NEGCON if compound == DMSO else TREATMENT
            rows.append((name, well, compound, moa if compound != DMSO else "control", control))
    return pd.DataFrame(rows, columns=list(PLATEMAP_COLUMNS))


def _compounds(layout: DemoLayout, total_trt: int) -> list[tuple[str, str]]:
    """(compound, moa) pairs, interleaved over MoAs, sized for about four replicate wells each."""
    k = max(1, total_trt // 4)
    n_moa = min(len(layout.moas), max(1, k // 2))
    per_moa = min(len(_COMPOUND_VARIANTS), max(1, k // n_moa))
    return [(layout.moas[i].compound(j)[0], layout.moas[i].name) for j in range(per_moa) for i in range(n_moa)]


def _positions_differ(placements: list[list[tuple[str, str]]]) -> bool:
    """True when no treatment compound occupies exactly the same set of wells on two plates."""
    seen: dict[str, list[frozenset[int]]] = {}
    for placement in placements:
        where: dict[str, set[int]] = {}
        for i, (compound, _) in enumerate(placement):
            if compound != DMSO:
                where.setdefault(compound, set()).add(i)
        for compound, positions in where.items():
            frozen = frozenset(positions)
            if frozen in seen.get(compound, []):
                return False
            seen.setdefault(compound, []).append(frozen)
    return True


def phenotypes(layout: DemoLayout) -> dict[str, Phenotype]:
    """Compound name -> phenotype, DMSO included (the baseline look)."""
    table = {DMSO: Phenotype("baseline")}
    for moa in layout.moas:
        for j in range(len(_COMPOUND_VARIANTS)):
            name, phenotype = moa.compound(j)
            table[name] = phenotype
    return table


# ----------------------------------------------------------------------------------------------------
# fields


@dataclass(frozen=True)
class PlateEffects:
    """Per-plate acquisition: channel gains, camera dark level and illumination fall-off per channel."""

    gain: np.ndarray
    offset: float
    illumination: np.ndarray  # (c, y, x)

    @classmethod
    def draw(cls, layout: DemoLayout, field_size: int, seed: int, plate_index: int) -> PlateEffects:
        rng = np.random.default_rng([seed, 1, plate_index])
        gain = np.exp(rng.normal(0.0, 0.15, len(layout.channels)))
        offset = float(rng.uniform(90.0, 130.0))
        shape = (field_size, field_size)
        illumination = np.stack([synthetic.vignetting(shape, rng) for _ in layout.channels])
        return cls(gain=gain, offset=offset, illumination=illumination)


def synthesize_field(layout: DemoLayout, phenotype: Phenotype, effects: PlateEffects, rng: np.random.Generator,
                     *, field_size: int, cells_per_field: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One field: (image uint16 (c, y, x), cells int32 (y, x), nuclei int32 (y, x))."""
    shape = layout.cell_shape
    radius_px = tuple(d / 2.0 / layout.pixel_size for d in layout.cell_diameter_um)
    nucleus_fraction = shape.nucleus_fraction
    if phenotype.pattern == "nuclear_enlargement":
        grow = 1.0 + 0.25 * phenotype.strength * phenotype.size
        radius_px = (radius_px[0] * grow, radius_px[1] * grow)
        nucleus_fraction = shape.enlarged_nucleus_fraction
    geometry = synthetic.layout_cells((field_size, field_size), cells_per_field, rng, radius_px=radius_px,
                                      nucleus_fraction=nucleus_fraction, elongation=shape.elongation,
                                      roughness=shape.roughness, touching=shape.touching, spread=shape.spread)
    signal = layout.render(geometry, phenotype, layout.pixel_size, rng)
    image = np.empty(signal.shape, dtype=np.uint16)
    for c in range(signal.shape[0]):
        image[c] = synthetic.acquire(signal[c], rng, photons=layout.photons[c], gain=float(effects.gain[c]),
                                     offset=effects.offset, illumination=effects.illumination[c])
    return image, geometry.labels, geometry.nuclei


# ----------------------------------------------------------------------------------------------------
# the plate writer


@dataclass(frozen=True)
class _FieldJob:
    """What a worker process needs to synthesize one field and write it into its plate."""

    layout: str
    path: str
    version: str
    chunk: int
    field_size: int
    cells_per_field: int
    seed: int
    plate_index: int
    well_index: int
    well: str
    field: int
    compound: str
    labels: bool

    @property
    def stream(self) -> list[int]:
        """The field's own random stream key, the same in every process."""
        return [self.seed, 2, self.plate_index, self.well_index, self.field]


def make_demo_plate(
    out_dir: str | Path,
    *,
    n_plates: int = DemoSize.PLATES,
    n_wells: int = DemoSize.WELLS,
    n_fields: int | None = None,
    field_size: int | None = None,
    cells_per_field: int | None = None,
    seed: int = 0,
    cellpainting: bool = False,
    geometry: Geometry = "demo",
    labels: bool = True,
    processes: int = 1,
    version: str = "0.5",
) -> list[Path]:
    """Write synthetic plates ``<out_dir>/<plate>.zarr`` and their ``<out_dir>/platemap.csv``.

    Parameters
    ----------
    out_dir
        Folder for the plates and the platemap (created; existing demo plates there are replaced).
    n_plates
        Plates to write, named ``demo-plate-1``, ``demo-plate-2``, ... (``demo-cp-plate-N`` with
        ``cellpainting``, ``jump-plate-N`` and ``hpa-plate-N`` for those geometries); replicates of each
        compound are spread over them.
    n_wells
        Wells per plate, filling rows A.. and columns 1.. of a 96-well plate (384-well above 96).
    n_fields
        Fields per well; default 2 for the demo, 9 for ``"jump"``, 4 for ``"hpa"``.
    field_size
        Field width and height in pixels; default 512 for the demo, 1080 for ``"jump"``, 2048 for
        ``"hpa"``.
    cells_per_field
        Cells asked for per field (fewer when they do not fit); default 10 for the HPA-like demo
        (0.32 um/px, cells 25-45 um across), 40 for the Cell Painting demo (0.598 um/px, 15-30 um),
        250 for ``"jump"`` and 20 for ``"hpa"``.
    seed
        Fixes every pixel, label and platemap entry: the same arguments give byte-identical plates.
    cellpainting
        Write the 5-channel Cell Painting layout instead of the HPA-like 4-channel one (implied by
        ``geometry="jump"``).
    geometry
        ``"demo"`` (small, quick fields), ``"jump"`` (JUMP Cell Painting fields) or ``"hpa"`` (HPA Cell
        Atlas confocal fields); see the module docstring.
    labels
        Store the ground-truth ``cells`` and ``nuclei`` label images. Without them a plate is like a
        JUMP plate as published: whatever runs on it must segment it.
    processes
        Worker processes synthesizing and writing fields side by side; 1 computes in this process (two
        threads ahead of the writer). Spawning costs about a second per process, so more than one pays
        from tens of fields on; the plates are the same whatever the number.
    version
        NGFF version of the plates, "0.5" (Zarr v3) or "0.4" (Zarr v2).

    Returns
    -------
    list of pathlib.Path
        The plate paths, in plate order. Each field holds the image (channels named as the layout
        says, uint16, two resolution levels) and, with ``labels``, label images ``cells`` (ground-truth
        whole-cell instances) and ``nuclei`` (each nucleus carrying its cell's label value).
    """
    from .writer import PlateWriter

    layout = layout_for(geometry, cellpainting=cellpainting)
    n_fields = layout.fields_per_well if n_fields is None else n_fields
    field_size = layout.field_size if field_size is None else field_size
    cells = layout.cells_per_field if cells_per_field is None else cells_per_field
    _check_counts(n_plates=n_plates, n_wells=n_wells, n_fields=n_fields, field_size=field_size,
                  cells_per_field=cells, version=version, processes=processes)
    out = make_folder(out_dir, "output folder")
    platemap = design_platemap(layout, n_plates=n_plates, n_wells=n_wells, seed=seed)
    n_rows, n_cols = _plate_format(n_wells)
    chunk = min(field_size, layout.max_chunk)
    paths = []
    start = time.perf_counter()
    pool = _pool(processes)
    try:
        for p, (plate, wells) in enumerate(platemap.groupby("plate", sort=False)):
            path = out / f"{plate}.zarr"
            jobs = [_FieldJob(layout.name, str(path), version, chunk, field_size, cells, seed, p, w, well, f,
                              compound, labels)
                    for w, (well, compound) in enumerate(zip(wells["well"], wells["compound"]))
                    for f in range(n_fields)]
            with PlateWriter(path, name=str(plate), channel_names=layout.channels, pixel_size=layout.pixel_size,
                             version=version, rows=n_rows, columns=n_cols, field_count=n_fields, levels=_LEVELS,
                             chunks=(1, chunk, chunk)) as writer:
                if isinstance(pool, ProcessPoolExecutor):
                    _write_in_processes(pool, writer, jobs)
                else:
                    _write_in_threads(pool, writer, jobs)
            paths.append(path)
            logger.info("%s: %d wells x %d fields written", path, len(wells), n_fields)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        _plate_effects.cache_clear()  # a plate's illumination maps are tens of MB
    pool.shutdown(wait=True)
    platemap.to_csv(out / Files.PLATEMAP, index=False)
    logger.info("%d demo plate(s) in %.1f s; platemap %s", len(paths), time.perf_counter() - start,
                out / Files.PLATEMAP)
    return paths


def _pool(processes: int) -> ThreadPoolExecutor | ProcessPoolExecutor:
    if processes == 1:
        return ThreadPoolExecutor(max_workers=_WORKERS)
    # spawned, not forked: the caller may run threads (a Dask client, a thread pool) a fork would copy
    return ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))


def _synthesize(job: _FieldJob) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layout = LAYOUTS[job.layout]
    phenotype = phenotypes(layout)[job.compound]
    effects = _plate_effects(job.layout, job.field_size, job.seed, job.plate_index)
    return synthesize_field(layout, phenotype, effects, np.random.default_rng(job.stream),
                            field_size=job.field_size, cells_per_field=job.cells_per_field)


@functools.lru_cache(maxsize=2)
def _plate_effects(layout: str, field_size: int, seed: int, plate_index: int) -> PlateEffects:
    """A plate's acquisition effects, drawn once per plate in each process."""
    return PlateEffects.draw(LAYOUTS[layout], field_size, seed, plate_index)


def _write_in_threads(pool: ThreadPoolExecutor, writer: PlateWriter, jobs: list[_FieldJob]) -> None:
    """Fields computed a few ahead in threads (numpy and scipy release the GIL), written here in order."""
    pending: deque[tuple[_FieldJob, Future]] = deque()
    for job in jobs:
        pending.append((job, pool.submit(_synthesize, job)))
        if len(pending) > 2 * _WORKERS:
            _write_next(writer, pending)
    while pending:
        _write_next(writer, pending)


def _write_next(writer: PlateWriter, pending: deque[tuple[_FieldJob, Future]]) -> None:
    job, future = pending.popleft()
    image, cells, nuclei = future.result()
    writer.write_field(job.well, str(job.field), image,
                       labels={"cells": cells, "nuclei": nuclei} if job.labels else None)


def _write_in_processes(pool: ProcessPoolExecutor, writer: PlateWriter, jobs: list[_FieldJob]) -> None:
    """Each worker process synthesizes and writes whole fields; this writer reserves them and finalises."""
    for job in jobs:
        writer.reserve_field(job.well, str(job.field))
    futures = [pool.submit(_write_field, job) for job in jobs]
    for future in futures:
        future.result()


def _write_field(job: _FieldJob) -> None:
    """Synthesize one field and write it into its (already open) plate; runs in a worker process."""
    from .writer import PlateWriter

    layout = LAYOUTS[job.layout]
    image, cells, nuclei = _synthesize(job)
    writer = PlateWriter(job.path, name=Path(job.path).stem, channel_names=layout.channels,
                         pixel_size=layout.pixel_size, version=job.version, levels=_LEVELS,
                         chunks=(1, job.chunk, job.chunk))
    writer.open(replace=False)
    writer.write_field(job.well, str(job.field), image,
                       labels={"cells": cells, "nuclei": nuclei} if job.labels else None)


def _check_counts(*, n_plates: int, n_wells: int, n_fields: int = 1, field_size: int = 512,
                  cells_per_field: int = 1, version: str = "0.5", processes: int = 1) -> None:
    problems = []
    if int(n_plates) < 1:
        problems.append(f"n_plates must be at least 1, got {n_plates}")
    if not 1 <= int(n_wells) <= 384:
        problems.append(f"n_wells must be 1..384 (a 96- or 384-well plate), got {n_wells}")
    if int(n_fields) < 1:
        problems.append(f"n_fields must be at least 1, got {n_fields}")
    if int(field_size) < 64:
        problems.append(f"field_size must be at least 64 pixels, got {field_size}")
    if int(cells_per_field) < 1:
        problems.append(f"cells_per_field must be at least 1, got {cells_per_field}")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        problems.append(f"processes must be a whole number of at least 1, got {processes!r}")
    if version not in ("0.4", "0.5"):
        problems.append(f"version must be '0.4' or '0.5', got {version!r}")
    if problems:
        raise ConfigError("demo plate: " + "; ".join(problems))
