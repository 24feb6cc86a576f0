"""The whole job: plates + platemap -> cells, profiles, metrics, figures and a report in one directory.

:func:`run` chains the stages a user would otherwise call one by one, with the parameters of a
preset (:mod:`subcell_scale.presets`), and records each step in ``manifest.json``:

1. check the inputs before any work: the platemap joins the plates, the preset finds its channels;
2. embed every cell (:func:`subcell_scale.pipeline.embed_plate`; resumable, fields recorded);
3. aggregate cells into well profiles, post-process them as the preset says (``profiles.h5ad``);
4. evaluate replicate retrieval, phenotypic activity, MoA retrieval and MoA nearest-neighbour accuracy
   (``metrics/*.csv``);
5. draw the figures (``figures/*.png``) and write ``report.html``.

:func:`demo` does the same on generated plates, with published weights when they are in the model
cache and deterministic random weights (said loudly) when they are not.
"""

from __future__ import annotations

import json
import logging
import os
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._constants import Files, Keys, Status
from .errors import ConfigError, ProfilingError
from .cellstore import cells_path
from .params import Profiling, RunParams
from .store import ResultsStore, is_url

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from distributed import Client

    from .models import ResolvedModel

log = logging.getLogger(__name__)

RUN_OPTIONS = ("plates", "platemap", "model", "classifiers", "preset", "scheduler", "cluster", "n_workers",
               "batch_size", "channel_map", "format", "retries", "figures", "null_size", "seed", "overrides")
"""Keys a config file may hold (``overrides`` is a table of preset parameters)."""

DEMO_VARIANT = "all_channels_MAE-CellS-ProtS-Pool"


@dataclass
class RunResult:
    """What a run produced and how it went; ``ok`` is False when a field failed or a step was skipped."""

    out: Path
    report: Path | None
    n_cells: int
    fields_done: int
    fields_failed: int
    failed: dict[str, str] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.fields_failed == 0 and not self.skipped

    def lines(self) -> list[str]:
        """A short human summary, as the command line prints it."""
        out = [f"cells: {self.n_cells} from {self.fields_done} fields"
               + (f"; {self.fields_failed} field(s) FAILED" if self.fields_failed else "")]
        out += [f"  failed {key}: {err}" for key, err in list(self.failed.items())[:10]]
        if len(self.failed) > 10:
            out.append(f"  ... and {len(self.failed) - 10} more (see {self.out / Files.MANIFEST})")
        if self.summary is not None and len(self.summary):
            for r in self.summary.itertuples():
                cell_type = "" if getattr(r, "cell_type", "all") == "all" else f"{r.cell_type:<8} "
                value = f"{int(r.value)}" if str(r.metric).startswith("n_") else f"{r.value:.3f}"
                out.append(f"{cell_type}{r.design:>12} {r.metric:<20} {value:>7}  ({r.n_groups} groups)")
        out += [f"skipped {step}: {why}" for step, why in self.skipped.items()]
        if self.report is not None:
            out.append(f"report: {self.report}")
        return out


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read run options from a YAML or TOML file (keys: :data:`RUN_OPTIONS`).

    Raises
    ------
    ConfigError
        Unreadable file, unknown suffix or unknown keys (named).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        msg = f"config file {path}: cannot be read ({exc.strerror or exc})"
        raise ConfigError(msg) from exc
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            msg = f"config file {path}: use .yaml, .yml or .toml"
            raise ConfigError(msg)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        msg = f"config file {path}: not valid {path.suffix[1:].upper()} ({exc})"
        raise ConfigError(msg) from exc
    if not isinstance(data, dict):
        msg = f"config file {path}: expected a table of options, found {type(data).__name__}"
        raise ConfigError(msg)
    unknown = sorted(set(data) - set(RUN_OPTIONS))
    if unknown:
        msg = f"config file {path}: unknown option(s) {unknown}; options are {list(RUN_OPTIONS)}"
        raise ConfigError(msg)
    return data


def run(
    plates: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    platemap: str | os.PathLike | pd.DataFrame | None = None,
    model: Any = None,
    classifiers: Sequence[str | os.PathLike] | None = None,
    preset: str | None = None,
    client: Client | None = None,
    scheduler: str | None = None,
    cluster: str = "auto",
    n_workers: int | None = None,
    batch_size: int | None = None,
    channel_map: Mapping[str, Any] | None = None,
    format: str = "zarr",
    retries: int = 1,
    figures: bool = True,
    null_size: int | None = None,
    seed: int | None = None,
    segment_if_missing: bool = True,
    progress: bool | None = None,
    **overrides: Any,
) -> RunResult:
    """Segment, embed, profile and evaluate plates; write every output into ``out``.

    Parameters
    ----------
    plates
        One or more OME-Zarr HCS plate paths or URLs.
    out
        The run directory (see DESIGN: ``cells.zarr``, ``profiles.h5ad``, ``metrics/``, ``figures/``,
        ``report.html``, ``manifest.json``). Running again with the same ``out`` resumes: finished
        fields are not recomputed, the later steps are redone. A local folder: to keep the cells on
        object storage, embed to the URL (:func:`subcell_scale.embed_plate` or ``subcell-scale
        embed --out s3://...``) and profile what :func:`subcell_scale.read_cells` opens.
    platemap
        Well annotations (plate, well, compound, moa, control_type, ...); without one the run stops
        after the cells and per-well profiles (metrics need perturbations).
    model, classifiers, preset, channel_map, batch_size, format, retries, segment_if_missing, progress
        As in :func:`subcell_scale.embed_plate`.
    client, scheduler, cluster, n_workers
        An existing client, or how to get one (:func:`subcell_scale.distributed.get_client`); a
        client made here is closed at the end.
    figures
        Draw the figures and the report.
    null_size, seed
        Null distribution size and seed of the mAP p-values (default: the preset's design, e.g. 10000
        and 42 for ``jump-cellpainting`` as the benchmark).
    **overrides
        Preset parameters (``out_size=224``, ``mask_mode="none"``, ...).

    Returns
    -------
    RunResult
        Paths, counts, failed fields and the metrics summary.

    Raises
    ------
    ConfigError
        ``out`` is a URL.
    """
    if is_url(out):
        msg = (f"out {os.fspath(out)}: run writes profiles, metrics, figures and a report into a local folder; "
               "give a local --out (a shared file system for a cluster), or embed to the URL with "
               "`subcell-scale embed --out URL` (embed_plate(out=URL)) and profile read_cells(URL)")
        raise ConfigError(msg)
    from .distributed import get_client
    from .models import resolve_model
    from .pipeline import embed_plate
    from .pipeline.jobs import open_plates

    out = Path(out)
    plate_list = [plates] if isinstance(plates, str | os.PathLike) else list(plates)
    # everything that can be wrong with the inputs fails here, before a cluster starts
    params = RunParams.resolve(preset, channel_map=channel_map, **overrides)
    opened = open_plates(plate_list)
    pm = _check_platemap(opened, platemap)
    told = params.variant if "variant" in params.overridden else None  # a checkpoint told which variant it is
    resolved = resolve_model(model, classifiers, default_variant=params.variant, variant=told)
    store = ResultsStore(out)
    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}
    own_client = client is None
    options = _jsonable({
        "plates": [os.fspath(p) for p in plate_list], "platemap": None if platemap is None else
        (os.fspath(platemap) if not isinstance(platemap, pd.DataFrame) else "<DataFrame>"),
        "model": _describe_model(model), "classifiers": [os.fspath(c) for c in classifiers or ()],
        "preset": params.preset, "scheduler": scheduler, "cluster": cluster, "n_workers": n_workers,
        "batch_size": batch_size, "channel_map": channel_map, "format": format, "retries": retries,
        "figures": figures, "null_size": null_size, "seed": seed, "overrides": overrides})
    with store.lock():  # refuse at once when another run writes here
        store.update("run", {"status": "embedding", "options": options})
    t0 = time.perf_counter()
    if own_client:
        client = get_client(cluster, scheduler=scheduler, n_workers=n_workers)
    try:  # embed_plate holds the directory's lock while it writes
        cells = embed_plate(opened, resolved, client=client, out=out, preset=params, platemap=pm,
                            batch_size=batch_size, format=format, retries=retries, progress=progress,
                            segment_if_missing=segment_if_missing)
    finally:
        if own_client:
            _close(client)
    timings["embed"] = time.perf_counter() - t0
    with store.lock():
        store.manifest = store._read_manifest()
        fields = store.manifest.get("fields", {})
        failed = {k: f.get("error") or Status.FAILED for k, f in fields.items() if f.get("status") == Status.FAILED}
        done = sum(1 for f in fields.values() if f.get("status") == Status.DONE)

        t0 = time.perf_counter()
        profiles = None
        if cells.n_obs == 0:
            skipped["profiles"] = "no cells were embedded"
        else:
            profiles, why = make_profiles(cells_path(out, format), params.profiling)
            if why:
                skipped["postprocess"] = why
            profiles.write_h5ad(out / Files.PROFILES)
            from .profiles import write_parquet

            write_parquet(profiles, out / Files.PROFILES_PARQUET)
        timings["profiles"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        tables: dict[str, pd.DataFrame] = {}
        if profiles is not None:
            tables, why = evaluate(profiles, params.design, out / Files.METRICS, null_size=null_size, seed=seed)
            if why:
                skipped["metrics"] = why
        timings["metrics"] = time.perf_counter() - t0

        report = None
        if figures:
            t0 = time.perf_counter()
            draw_figures(out, cells, profiles, tables, params, model=resolved)
            timings["figures"] = time.perf_counter() - t0
            from .report import build_report

            store.update("run", {**store.manifest["run"], "timings": _rounded(timings), "skipped": skipped})
            report = build_report(out)
        result = RunResult(out=out, report=report, n_cells=int(cells.n_obs), fields_done=done,
                           fields_failed=len(failed), failed=failed, summary=tables.get("summary"),
                           skipped=skipped)
        store.update("run", {**store.manifest["run"], "status": Status.DONE if result.ok else Status.INCOMPLETE,
                             "timings": _rounded(timings), "skipped": skipped,
                             "summary": [] if result.summary is None else result.summary.to_dict("records")})
    return result


def make_profiles(cells: str | os.PathLike | AnnData, recipe: Profiling) -> tuple[AnnData, str | None]:
    """Well profiles from a cells AnnData: the preset's aggregation, then its post-processing chain.

    Returns the profiles and, when the chain could not run on them (no negative-control wells to fit
    on, a single well, constant features), why: the aggregated profiles are returned then, so a run
    still writes them, and says the post-processing was skipped.
    """
    from .profiles import aggregate, postprocess

    profiles = aggregate(cells, **dict(recipe.aggregation))
    if not recipe.postprocess:
        return profiles, None
    try:
        return postprocess(profiles, steps=[dict(step) for step in recipe.postprocess]), None
    except ProfilingError as exc:
        log.warning("post-processing skipped: %s", exc)
        return profiles, f"{exc} (profiles are the aggregated wells, not post-processed)"


def evaluate(profiles: AnnData, design: Mapping[str, Any], out_dir: str | os.PathLike | None = None, *,
             null_size: int | None = None, seed: int | None = None) -> tuple[dict[str, pd.DataFrame], str | None]:
    """The preset's evaluation of well profiles (:func:`subcell_scale.metrics.evaluate_profiles`), or why not.

    ``null_size`` and ``seed``, when given, replace the design's. Returns the tables (written as CSV
    into ``out_dir``) and, when nothing could be evaluated, the reason (no compounds in the platemap,
    fewer than two, no pairs): the run names the step as skipped instead of failing.
    """
    from .metrics import EvaluationDesign, evaluate_profiles

    options = {k: v for k, v in (("null_size", null_size), ("seed", seed)) if v is not None}
    evaluation = EvaluationDesign.from_mapping(design, **options)
    column = evaluation.pert_col
    if column not in profiles.obs.columns:
        return {}, (f"profiles have no {column!r} column (give a platemap with plate, well, {column}, moa, "
                    "control_type)")
    if profiles.obs[column].nunique() < 2:
        return {}, f"fewer than two values of {column!r}"
    try:
        return evaluate_profiles(profiles, out_dir, design=evaluation), None
    except ProfilingError as exc:
        log.warning("evaluation skipped: %s", exc)
        return {}, str(exc)


def draw_figures(out: Path, cells: AnnData, profiles: AnnData | None, tables: Mapping[str, pd.DataFrame],
                 params: RunParams, *, model: ResolvedModel, n_examples: int = 8) -> list[Path]:
    """The report's figures, written to ``out/figures``; each one is drawn only when its inputs exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import pl, tl

    fig_dir = out / Files.FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = fig_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    if cells.n_obs:
        save(pl.cells_per_well(cells), "cells_per_well")
        color = [c for c in ("compound", "moa") if c in cells.obs.columns]
        n_classes = len(cells.uns.get(Keys.LOCALIZATION_CLASSES, ()))
        if Keys.LOCALIZATION in cells.obsm and cells.obsm[Keys.LOCALIZATION].shape[1] == n_classes:
            # one pass: the top class per cell (multi-pass runs keep one block of classes per pass)
            tl.top_localization(cells)
            color.append(tl.TOP_LOCALIZATION)
        if cells.n_obs >= 10 and color:
            tl.umap(cells)
            save(pl.umap(cells, color, title="Cells"), "umap_cells")
        examples = _example_cells(cells, model, params, n_examples)
        if examples is not None:
            save(pl.cell_gallery(**examples), "example_cells")
    if profiles is not None and profiles.n_obs >= 6:
        color = [c for c in ("compound", "moa") if c in profiles.obs.columns]
        if color:
            tl.umap(profiles, n_neighbors=min(15, profiles.n_obs - 1))
            save(pl.umap(profiles, color, title="Well profiles"), "umap_profiles")
    maps = {d: tables[f"{d}_map"] for d in ("replicate", "moa") if f"{d}_map" in tables}
    if maps:
        save(pl.map_scatter(maps), "map_vs_q")
        save(pl.fraction_retrieved(maps), "fraction_retrieved")
    curves = {f"{what} {cell_type}".strip(): table
              for what, key in (("MoA", "moa_nn"), ("compound", "compound_nn")) if key in tables
              for cell_type, table in _by_cell_type(tables[key])}
    if curves:
        save(pl.nn_accuracy(curves, title="Nearest-neighbour accuracy"), "nn_accuracy")
    return written


def _example_cells(cells: AnnData, model: ResolvedModel, params: RunParams, n: int) -> dict[str, Any] | None:
    """Crops, pooling attention and localization of a few cells of one field, recomputed in-process."""
    from .models import CLASS_NAMES
    from .pipeline import field_crops

    first = cells.obs.iloc[0]
    path = (cells.uns.get(Keys.PROVENANCE, {}).get("plates") or {}).get(str(first["plate"]))
    if path is None:
        return None
    instance = model.local("cpu")
    crops, table = field_crops(path, str(first["well"]), str(first["field"]), preset=params,
                               model_channels=instance.channels)
    if not len(crops):
        return None
    crops = crops[:n, 0]  # first pass
    size = (crops.shape[-1] // 16) * 16
    outputs = instance.embed(crops[..., :size, :size], batch_size=n)
    titles = [f"{first['well']} cell {int(lab)}" for lab in table["label"].to_numpy()[:n]]
    return {"crops": crops[..., :size, :size], "pool_attention": outputs["pool_attention"],
            "probabilities": outputs.get("probabilities"), "class_names": list(CLASS_NAMES),
            "channel_names": list(instance.channels), "titles": titles}


def demo(out: str | os.PathLike = "demo-run", *, n_plates: int = 2, n_wells: int = 12, n_fields: int = 1,
         field_size: int = 512, cells_per_field: int = 8, seed: int = 0, cluster: str = "auto",
         n_workers: int | None = None, progress: bool | None = None, **run_options: Any) -> RunResult:
    """Generate demo plates and run the whole job on them on a local cluster.

    With the published ``all_channels`` weights in the model cache (``subcell-scale download``) and
    a GPU, this is the real model at the HPA training geometry; otherwise the full-size architecture
    with deterministic random weights, at 224-px crops so that a laptop finishes in minutes.
    """
    from .distributed import count_gpus
    from .models import ModelSpec
    from .errors import CheckpointError
    from .io.demo import make_demo_plate
    from .models.download import cached_files

    out = Path(out)
    plate_dir = out / Files.PLATES
    existing = sorted(plate_dir.glob("*.zarr"))
    if existing and (plate_dir / Files.PLATEMAP).exists():
        plates = existing
        log.info("reusing the demo plates in %s", plate_dir)
    else:
        plates = make_demo_plate(plate_dir, n_plates=n_plates, n_wells=n_wells, n_fields=n_fields,
                                 field_size=field_size, cells_per_field=cells_per_field, seed=seed)
    try:
        cached_files(DEMO_VARIANT, n_classifiers=1, verify=False)
    except CheckpointError:
        banner(f"No published SubCell weights in the model cache: the demo uses the full-size {DEMO_VARIANT} "
               "architecture with DETERMINISTIC RANDOM WEIGHTS, so embeddings and localizations show the "
               "pipeline, not biology. Get the real weights with:  subcell-scale download " + DEMO_VARIANT)
        model: Any = ModelSpec(source="random", variant=DEMO_VARIANT, seed=seed, n_classifiers=1)
    else:
        model = DEMO_VARIANT
    # the HPA training geometry (448 px at 0.16 um/px) on a GPU; the same 71.7 um at 224 px on CPUs
    options: dict[str, Any] = {} if count_gpus() else {"model_pixel_size": 0.32, "out_size": 224}
    options.update(run_options)
    return run(plates, out=out, platemap=plate_dir / Files.PLATEMAP, model=model, preset="hpa", cluster=cluster,
               n_workers=n_workers, progress=progress, **options)


def banner(text: str) -> None:
    """A warning nobody scrolls past: logged and framed on stderr."""
    import sys
    import textwrap

    log.warning("%s", text)
    lines = textwrap.wrap(text, 76)
    rule = "!" * 80
    print("\n".join([rule, *[f"! {line:<76} !" for line in lines], rule]), file=sys.stderr, flush=True)


# -- helpers ---------------------------------------------------------------------------------------
def _check_platemap(plates: list[Any], platemap: Any) -> pd.DataFrame | None:
    """Read the platemap and join it to the plates' wells now, so a bad row fails before any work."""
    if platemap is None:
        return None
    from .io import join_platemap, read_platemap

    pm = read_platemap(platemap)
    wells = [{"plate": plate.name, "well": w} for plate in plates for w in plate.wells]
    join_platemap(pd.DataFrame(wells), pm)
    return pm


def _by_cell_type(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """A table's rows per cell type; the name is empty when there is only one."""
    if "cell_type" not in table.columns or table["cell_type"].nunique() < 2:
        return [("", table)]
    return [(str(name), part) for name, part in table.groupby("cell_type", sort=True)]


def _describe_model(model: Any) -> Any:
    if model is None or isinstance(model, str | os.PathLike):
        return None if model is None else os.fspath(model)
    describe = getattr(model, "describe", None)
    return describe() if callable(describe) else type(model).__name__


def _close(client: Any) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _rounded(timings: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in timings.items()}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: os.fspath(o) if isinstance(o, os.PathLike) else str(o)))
