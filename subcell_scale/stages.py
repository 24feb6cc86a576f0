"""The stages of a run as functions of the run: segment, embed, profile, evaluate, report.

:meth:`Run.open` checks a run's description against its inputs (:mod:`subcell_scale.runcheck`), and
only then takes the run directory's lock, records the description (``run.json``) and holds the one
manifest (:class:`~subcell_scale.store.ResultsStore`) every stage writes. The field stages (segment,
embed) go through the one scheduler (:func:`subcell_scale.distributed.scheduler.map_tasks`), keyed
by :class:`~subcell_scale.rundir.FieldId`, with its one retry policy; the others run on the client.
When the run ends, however it ends, the manifest says so: ``done``, ``incomplete`` (fields failed or
steps were skipped), ``failed`` (with the error) or ``interrupted``.

:func:`subcell_scale.run` is these stages one after the other; :func:`subcell_scale.embed_plate` and
``subcell-scale segment`` are runs of one stage.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._constants import Files, Keys, Status
from ._settings import settings
from ._version import __version__
from .errors import ConfigError, ProfilingError
from .runcheck import check_run
from .runspec import record_description
from .rundir import FieldId, RunPath
from .store import ResultsStore, parameters_digest

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from distributed import Client

    from .pipeline.field import FieldJob
    from .runspec import RunSpec

log = logging.getLogger(__name__)

__all__ = ["Run", "embed", "evaluate", "make_profiles", "profile", "report", "segment"]

PLAN_AHEAD = 2
"""Plates planned ahead of the one whose fields are running (each may read its pixels once)."""


class Run:
    """A run being executed: its description, the inputs the checks opened, its client and its one manifest.

    Made by :meth:`open`, never directly. The stages read everything from it; what they skip is
    collected in :attr:`skipped` and what fails in :attr:`failed`, and :meth:`open` records both when
    the run ends.

    Attributes
    ----------
    spec
        The run's description.
    stages
        The stages this run was opened for.
    plates, plans, model, platemap, labels_in_run
        What the checks opened and resolved (see :class:`subcell_scale.runcheck.CheckedInputs`).
    store
        The run directory's results store (None: a run kept in memory).
    client
        The Dask client of the field stages (None: in this process).
    digest
        The digest of the parameters that change embeddings (shards record it; resume compares it).
    """

    def __init__(self, spec: RunSpec, stages: Sequence[str], checked: Any, store: ResultsStore | None,
                 scratch: Path) -> None:
        self.spec = spec
        self.stages = tuple(stages)
        self.plates = checked.plates
        self.plans = checked.plans
        self.model = checked.model
        self.platemap = checked.platemap
        self.labels_in_run = checked.labels_in_run
        self.store = store
        self.scratch = scratch
        self.client: Client | None = None
        self.timings: dict[str, float] = {}
        self.skipped: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self._wells: dict[str, Any] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.views = self._model_views()
        self.digest = "" if self.model is None else parameters_digest(
            {**spec.params.embedding_parameters(), "model": self.model.identity,
             "segment_if_missing": bool(spec.segment_if_missing),
             **({"views": {v.name: v.describe() for v in self.views}} if self.views else {})})

    def _model_views(self) -> tuple[Any, ...]:
        """The run's model views, each saved for the workers into ``views/`` of the run (or its scratch)."""
        if not self.spec.views:
            return ()
        from .modelview import VIEWS_FOLDER, prepare_views

        folder = (self.store.root if self.store is not None else RunPath(self.scratch)) / VIEWS_FOLDER
        return prepare_views(self.spec.views, folder, self.spec.params.crop.side_um)

    # -- opening and closing ------------------------------------------------------------------------
    @classmethod
    @contextmanager
    def open(cls, spec: RunSpec, *, stages: Sequence[str] = ("embed",), client: Client | None = None,
             start_cluster: bool = False) -> Iterator[Run]:
        """Check the run, then hold its directory for the stages (see the module docstring).

        Parameters
        ----------
        spec
            The run's description (:func:`subcell_scale.runspec.describe_run`).
        stages
            The stages that will run.
        client
            A client to use; None: the one the description asks for (``scheduler`` / ``cluster``), or
            this process. A client made here is closed at the end.
        start_cluster
            Start a cluster (``settings.cluster``) when the description names none.

        Raises
        ------
        SubcellScaleError
            Anything :func:`subcell_scale.runcheck.check_run` finds, before a file is written.
        """
        checked = check_run(spec, stages)
        for line in spec.params.report_lines(checked.plans[0] if checked.plans else None):
            log.info("%s", line)
        with ExitStack() as stack:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="subcell-scale-")))
            store = None
            if spec.out is not None:
                store = ResultsStore(spec.out, storage_options=spec.out_storage_options or spec.storage_options)
                stack.enter_context(store.lock())  # refuse at once when another run writes here
            run = cls(spec, stages, checked, store, scratch)
            stack.callback(run._close_pool)
            if store is not None and run.model is not None:
                store.check_compatible(run.digest, spec.params.to_dict())
            run._begin()
            try:
                if client is None and (start_cluster or spec.scheduler is not None or spec.cluster is not None):
                    from .distributed import get_client

                    client = get_client(spec.cluster or settings.cluster, scheduler=spec.scheduler,
                                        n_workers=spec.n_workers)
                    stack.callback(_close, client)
                run.client = client
                yield run
            except KeyboardInterrupt:
                run._end(Status.INTERRUPTED)
                raise
            except BaseException as exc:
                run._end(Status.FAILED, error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
                raise
            run._end()

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    @property
    def root(self) -> RunPath | None:
        """The run directory (None: a run kept in memory)."""
        return None if self.store is None else self.store.root

    def _begin(self) -> None:
        if self.store is None:
            return
        record_description(self.spec, self.plans, self.store.root)
        labels = {name: f"{Files.LABELS}/{name}" for name in sorted(self.labels_in_run)}
        self.store.update("run", {"status": Status.RUNNING, "stages": list(self.stages), "started": _now(),
                                  "options": self.spec.options(), **({"labels": labels} if labels else {})})

    def _end(self, status: str | None = None, *, error: str | None = None) -> None:
        if self.store is None:
            return
        if status is None:
            status = Status.INCOMPLETE if (self.failed or self.skipped) else Status.DONE
        record = dict(self.store.manifest.get("run") or {})
        record.update(status=status, ended=_now(), timings={k: round(v, 2) for k, v in self.timings.items()},
                      skipped=dict(self.skipped), error=error)
        self.store.update("run", record)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage and record it in the manifest's ``run`` section."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - started

    def skip(self, step: str, why: str) -> None:
        """A step that could not run: named in the summary and the manifest, and the exit status is 4."""
        log.warning("%s skipped: %s", step, why)
        self.skipped[step] = why

    # -- the run's fields ---------------------------------------------------------------------------
    def plate_jobs(self, *, embedding: bool = True) -> Iterator[list[FieldJob]]:
        """Each plate's field jobs, in run order, planned a few plates ahead in threads.

        Planning a plate may read its pixels (a flat field estimated from it, its intensity histogram),
        so later plates are planned while the fields of the first ones run.
        """
        from .pipeline.jobs import plan_jobs

        plans = self.plans or [None] * len(self.plates)  # segmentation alone reads no model channels
        batch_size = settings.batch_size if self.spec.batch_size is None else self.spec.batch_size

        def plan(i: int) -> list[FieldJob]:
            return plan_jobs([self.plates[i]], [plans[i]], self.spec.params, root=self.root, scratch=self.scratch,
                             digest=self.digest, batch_size=batch_size, crop_on=self.spec.crop_on,
                             segment_if_missing=self.spec.segment_if_missing, overwrite=self.spec.overwrite,
                             labels_in_run=self.labels_in_run, embedding=embedding, views=self.views)

        with ThreadPoolExecutor(max_workers=PLAN_AHEAD) as pool:
            ahead: deque[Any] = deque()
            for i in range(len(self.plates)):
                ahead.append(pool.submit(plan, i))
                if len(ahead) > PLAN_AHEAD:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

    def jobs(self, *, embedding: bool = True) -> list[FieldJob]:
        """One job per field of the run's plates, in plate, well, field order."""
        return [job for jobs in self.plate_jobs(embedding=embedding) for job in jobs]

    # -- a plate's products, as soon as it ends -----------------------------------------------------
    @property
    def plate_products(self) -> bool:
        """Whether each plate's wells are aggregated as it ends: the run goes on to profiles in a local
        folder, and a profile groups cells of one plate only (``aggregation.by`` holds ``plate``)."""
        return ("profile" in self.stages and self.store is not None and self.store.root.is_local
                and "plate" in self.spec.params.profiling.aggregation.by)

    def plate_ended(self, name: str, jobs: Sequence[FieldJob]) -> None:
        """The last field of plate ``name`` has ended: aggregate its wells from its shards, on a worker
        when there is a cluster (``wells/<plate>.h5ad``), unless they are there from an earlier run."""
        if not self.plate_products:
            return
        record = self.store.records.plate(name)
        target = self.root.local / Files.WELLS / f"{name}.h5ad"
        stamp = self._wells_stamp(record)
        if stamp is not None and _wells_stamp_of(target) == stamp:
            return
        plate = next(p for p in self.plates if p.name == name)
        plan = next(p for p in self.plans if p.name == name)
        fields = [(job.fid, job.shard_path, int(self.store.field(job.fid).get("n_cells") or 0)) for job in jobs
                  if self.store.field(job.fid).get("status") == Status.DONE]
        platemap = self.platemap
        if platemap is not None and "plate" in platemap.columns:
            platemap = platemap[platemap["plate"].astype(str) == name]  # each task carries its plate's rows only
        arguments = (fields, plate, plan.pixel_size, plan.pass_names, platemap,
                     self.spec.params.profiling.aggregation.kwargs(), str(target), stamp)
        if self.client is not None:
            self._wells[name] = self.client.submit(plate_wells, *arguments, key=f"wells-{name}", pure=False)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wells")
            self._wells[name] = self._pool.submit(plate_wells, *arguments)

    def _wells_stamp(self, record: Any) -> str | None:
        """What a plate's wells were made from: its shards (when complete) and the aggregation."""
        if not record.complete:
            return None
        from .store import parameters_digest

        return parameters_digest({"shards": record.shards_digest,
                                  "aggregation": self.spec.params.profiling.aggregation.kwargs()})

    def plate_wells_files(self) -> list[Path] | None:
        """Every plate's wells file, in plate name order, once each has been written; None when a plate
        has none (it failed in part, or the run does not make them)."""
        if not self.plate_products:
            return None
        for name, future in list(self._wells.items()):
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - the profiles are then aggregated from the cells store
                log.warning("the wells of plate %s could not be aggregated from its shards (%s); the profiles "
                            "come from the cells store", name, exc)
                return None
        files = []
        for plate in sorted(self.plates, key=lambda p: p.name):
            record = self.store.records.plate(plate.name)
            target = self.root.local / Files.WELLS / f"{plate.name}.h5ad"
            if not record.complete or _wells_stamp_of(target) != self._wells_stamp(record):
                return None
            files.append(target)
        return files

    @property
    def n_fields(self) -> int:
        """Fields of the run's plates (metadata only)."""
        return sum(len(p.fields(w)) for p in self.plates for w in p.wells)

    def order(self, fid: FieldId) -> tuple[int, int, int]:
        """Where a field stands in the run's row order (plate, well, field)."""
        if not hasattr(self, "_order"):
            self._order = {FieldId(p.name, w, str(f)): (i, j, k) for i, p in enumerate(self.plates)
                           for j, w in enumerate(p.wells) for k, f in enumerate(p.fields(w))}
        return self._order[fid]

    def done_fields(self) -> Iterator[tuple[FieldId, RunPath, int]]:
        """The run's finished fields in plate, well, field order: id, shard and cell count (from the records)."""
        for plate in self.plates:
            for well in plate.wells:
                for fld in plate.fields(well):
                    fid = FieldId(plate.name, well, str(fld))
                    record = self.store.field(fid)
                    if record.get("status") == Status.DONE:
                        yield fid, self.store.shard_path(fid), int(record.get("n_cells") or 0)


# -- the stages -----------------------------------------------------------------------------------------
def segment(run: Run) -> dict[FieldId, dict[str, Any]]:
    """Segment the run's fields that lack labels (every field with ``overwrite``) and store the labels.

    Labels go into each plate, or into the run directory for a plate that cannot take them. A rerun
    skips the fields whose labels exist. Returns one record per field (see
    :func:`subcell_scale.pipeline.execute.segment_fields`); failed fields are in :attr:`Run.failed`.
    """
    from .pipeline.execute import segment_fields

    with run.stage("segment"):
        records = segment_fields(run.jobs(embedding=False), run.client, run.store, retries=run.spec.retries,
                                 progress=run.spec.progress)
    run.failed.update({fid.key: r["error"] for fid, r in records.items() if r["status"] == Status.FAILED})
    return records


def embed(run: Run) -> AnnData:
    """Embed every cell of the run's plates: the cells AnnData (streamed into ``cells.zarr`` with an ``out``).

    Fields without labels are segmented on the way (the labels stored as :func:`segment` stores
    them). Finished fields of an earlier run into the same directory are read back, not computed;
    plates are planned while the first fields run. When the run goes on to profiles, each plate's
    wells are aggregated from its shards as soon as its last field has ended (:meth:`Run.plate_ended`).
    """
    from .cellstore import RunContext, assemble, cells_name
    from .cellwriter import DamagedShards, stream_cells
    from .pipeline.execute import run_fields
    from .pipeline.jobs import fields_per_task

    spec, params = run.spec, run.spec.params
    batch_size = settings.batch_size if spec.batch_size is None else spec.batch_size
    with run.stage("embed"):
        context = RunContext(run.plates, run.plans, params, run.model, run.platemap,
                             {v.name: v.describe() for v in run.views})
        per_task = spec.fields_per_task or fields_per_task(run.plates, run.plans, params, batch_size)
        store = run.store
        if store is not None:
            store.begin(inputs=_inputs(run), parameters=params.to_dict(), model=run.model.identity,
                        versions=_versions(), digest=run.digest)
        started = time.perf_counter()
        results = run_fields(run.plate_jobs(), run.model, run.client, store, total=run.n_fields, scratch=run.scratch,
                             device=spec.device, retries=spec.retries, progress=spec.progress,
                             fields_per_task=per_task, on_plate=run.plate_ended if "profile" in run.stages else None)
        failed = [fid.key for fid in results.failed]
        run.failed.update({fid.key: error for fid, error in results.failed.items()})
        if store is None:
            fields = [(fid, shard) for fid, shard in results.shards.items()]
            return assemble(sorted(fields, key=lambda item: run.order(item[0])), context, failed)
        try:
            cells = stream_cells(run.done_fields, context, failed, store.root, spec.format)
        except DamagedShards as damaged:  # changed since their fields were recorded: computed again
            log.warning("%s", damaged)
            for fid in damaged.fields:
                (store.root / fid.shard).remove()  # said once, here: the resume check then finds no shard
                store.set_pending([fid], force=True)
            again = run_fields(run.plate_jobs(), run.model, run.client, store, total=run.n_fields,
                               scratch=run.scratch, device=spec.device, retries=spec.retries, progress=spec.progress,
                               fields_per_task=per_task, on_plate=None)
            run.failed.update({fid.key: error for fid, error in again.failed.items()})
            failed = sorted({*failed, *(fid.key for fid in again.failed)})
            cells = stream_cells(run.done_fields, context, failed, store.root, spec.format)
        store.summarize(seconds=round(time.perf_counter() - started, 3), cells=cells_name(spec.format))
        store.flush(force=True)
    if results.failed:
        log.warning("%d of %d fields failed (see %s); rerun with the same out to retry them",
                    len(results.failed), run.n_fields, store.manifest_path)
    return cells


def profile(run: Run, cells: AnnData) -> AnnData | None:
    """Well profiles of the run's cells as its description says (``profiles.h5ad``, ``profiles.parquet``
    partitioned by plate).

    Each plate's wells were aggregated from its shards as it ended (:meth:`Run.plate_ended`): they are
    put together and post-processed across plates, with no pass over the cells store; otherwise
    (a partial plate, an aggregation across plates) the cells store is aggregated. Returns None (and
    names the step as skipped) when no cell was embedded; profiles that could not be post-processed
    (no negative controls to fit on, ...) are written aggregated, the step named.
    """
    from .cellstore import cells_path
    from .profiles import write_parquet

    with run.stage("profiles"):
        if cells.n_obs == 0:
            run.skip("profiles", "no cells were embedded")
            return None
        out = run.root.local
        files = run.plate_wells_files()
        wells = _wells_together(files, cells) if files else cells_path(out, run.spec.format)
        profiles, why = make_profiles(wells, run.spec.params.profiling, aggregated=files is not None, views=cells)
        if why:
            run.skip("postprocess", why)
        profiles.write_h5ad(out / Files.PROFILES)
        write_parquet(profiles, out / Files.PROFILES_PARQUET, partition_by="plate")
    return profiles


def plate_wells(fields: Sequence[tuple[FieldId, Any, int]], plate: Any, pixel_size: Sequence[float],
                pass_names: Sequence[str], platemap: Any, aggregation: Mapping[str, Any], target: str,
                stamp: str | None) -> str:
    """One plate's well profiles aggregated from its shards, written to ``target`` (a task of the run)."""
    from .cellstore import plate_cells
    from .profiles import aggregate

    wells = aggregate(plate_cells(fields, plate, pixel_size, pass_names, platemap), **aggregation)
    wells.uns[WELLS_STAMP] = stamp or ""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    new = Path(target).with_name(f".{Path(target).name}.new")
    wells.write_h5ad(new)
    new.replace(target)
    return target


WELLS_STAMP = "subcell_scale_wells"
"""Key of a plate's wells file holding what it was made from (its shards and the aggregation)."""


def _wells_stamp_of(path: Path) -> str | None:
    """The stamp a plate's wells file was written with (None: no file)."""
    if not path.exists():
        return None
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return handle["uns"][WELLS_STAMP][()].decode() if WELLS_STAMP in handle.get("uns", {}) else None
    except (OSError, KeyError):
        return None


def _wells_together(files: Sequence[Path], cells: AnnData) -> AnnData:
    """The plates' wells as one AnnData, in plate order, with the categories of the run's ``obs``."""
    import anndata as ad

    parts = [ad.read_h5ad(path) for path in files]
    wells = ad.concat(parts, merge="same", uns_merge="first", index_unique=None)
    wells.uns.pop(WELLS_STAMP, None)
    for column in wells.obs.columns:
        if column in cells.obs.columns and isinstance(cells.obs[column].dtype, pd.CategoricalDtype):
            wells.obs[column] = pd.Categorical(wells.obs[column].astype(object),
                                               dtype=cells.obs[column].dtype)
    return wells


def evaluate(run: Run, profiles: AnnData | None) -> dict[str, pd.DataFrame]:
    """The run's evaluation of its profiles, written as ``metrics/*.csv``; skipped (and named) when it cannot run."""
    with run.stage("metrics"):
        if profiles is None:
            return {}
        tables, why = evaluate_profiles_for(profiles, run.spec.params.design, run.root.local / Files.METRICS)
        if why:
            run.skip("metrics", why)
    return tables


def report(run: Run, cells: AnnData, profiles: AnnData | None, tables: Mapping[str, pd.DataFrame]) -> Path | None:
    """The run's figures (``figures/*.png``) and ``report.html``; a figure that cannot be drawn is named."""
    from .report import build_report

    with run.stage("figures"):
        draw_figures(run, cells, profiles, tables)
    run.store.update("run", {**run.store.manifest["run"], "timings": {k: round(v, 2) for k, v in run.timings.items()},
                             "skipped": dict(run.skipped)})
    return build_report(run.root.local)


# -- profiles and metrics, as the description says ------------------------------------------------------
def make_profiles(cells: Any, recipe: Any, *, aggregated: bool = False, views: Any = None
                  ) -> tuple[AnnData, str | None]:
    """Well profiles from a cells AnnData: the recipe's aggregation, then its post-processing chain.

    ``aggregated`` says ``cells`` are the wells already (aggregated plate by plate). Each view of the
    cells beside ``X`` (``obsm["cellprofiler"]``, a user's model; found in ``views``, by default
    ``cells``: an AnnData or a run's cells store) is aggregated alike and post-processed on its own
    into ``profiles.obsm[view]`` (:mod:`subcell_scale.views`). Returns the profiles and, when the
    chain could not run on them (no negative-control wells to fit on, a single well, constant
    features), why: the aggregated profiles are returned then, so a run still writes them, and says
    the post-processing was skipped.
    """
    from .cellstore import read_cells
    from .profiles import aggregate, postprocess
    from .views import attach_view, cell_views

    profiles = cells if aggregated else aggregate(cells, **recipe.aggregation.kwargs())
    source = cells if views is None and not aggregated else views
    if source is not None and not hasattr(source, "obsm"):
        source = read_cells(source)
    names = cell_views(source) if source is not None else []
    for name in names:
        attach_view(profiles, aggregate(source, use_rep=name, **recipe.aggregation.kwargs()), name,
                    source.uns[Keys.VIEWS][name])
    if not recipe.postprocess:
        return profiles, None
    try:
        done = postprocess(profiles, steps=recipe.postprocess)
        for name in names:
            done = postprocess(done, steps=recipe.postprocess, use_rep=name)
    except ProfilingError as exc:
        log.warning("post-processing skipped: %s", exc)
        return profiles, f"{exc} (profiles are the aggregated wells, not post-processed)"
    return done, None


def evaluate_profiles_for(profiles: AnnData, design: Any, out_dir: str | Path | None = None
                          ) -> tuple[dict[str, pd.DataFrame], str | None]:
    """The evaluation of well profiles with ``design`` (:func:`subcell_scale.metrics.evaluate_profiles`), or why not.

    Returns the tables (written as CSV into ``out_dir``, with ``design.json``: the design used) and,
    when the profiles hold other views, each view's under ``out_dir/views/<view>/`` and a ``summary``
    of every view (``view`` column first; :func:`subcell_scale.views.evaluate_views`); and,
    when nothing could be evaluated (no compounds in the platemap, fewer than two, no pairs), the
    reason: a run names the step as skipped instead of failing.
    """
    from .metrics import evaluate_profiles
    from .views import cell_views, evaluate_views, summary_of

    column = design.pert_col
    if column not in profiles.obs.columns:
        return {}, (f"profiles have no {column!r} column (give a platemap with plate, well, {column}, moa, "
                    "control_type)")
    if profiles.obs[column].nunique() < 2:
        return {}, f"fewer than two values of {column!r}"
    try:
        if cell_views(profiles):
            by_view = evaluate_views(profiles, design, out_dir)
            tables = {**by_view[next(iter(by_view))], "summary": summary_of(by_view)}
        else:
            tables = evaluate_profiles(profiles, out_dir, design=design)
    except ProfilingError as exc:
        log.warning("evaluation skipped: %s", exc)
        return {}, str(exc)
    if out_dir is not None:
        (Path(out_dir) / Files.DESIGN).write_text(json.dumps(design.to_dict(), indent=1, default=str))
    return tables, None


# -- figures ----------------------------------------------------------------------------------------------
def draw_figures(run: Run, cells: AnnData, profiles: AnnData | None, tables: Mapping[str, pd.DataFrame],
                 *, n_examples: int = 8) -> list[Path]:
    """The report's figures, written to ``out/figures``; each is drawn only when its inputs exist.

    Figures are drawn on their own ``Figure`` objects, so the caller's matplotlib backend is left as
    it was. A figure that fails is named in :attr:`Run.skipped` (``figures``) and the others are drawn.
    """
    from matplotlib import pyplot as plt

    from . import pl, tl

    fig_dir = run.root.local / Files.FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed: list[str] = []

    def save(name: str, draw: Any) -> None:
        try:
            fig = draw()
        except (ProfilingError, ValueError, KeyError) as exc:
            log.warning("figure %s not drawn: %s", name, exc)
            failed.append(f"{name} ({exc})")
            return
        path = fig_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    if cells.n_obs:
        save("cells_per_well", lambda: pl.cells_per_well(cells))
        color = [c for c in ("compound", "moa") if c in cells.obs.columns]
        if Keys.LOCALIZATION in cells.obsm and Keys.LOCALIZATION_CLASSES in cells.uns:
            before = set(cells.obs.columns)
            try:
                tl.top_localization(cells)
            except ConfigError as exc:
                log.info("no top localization on the cells UMAP: %s", exc)
            color += [c for c in cells.obs.columns if c not in before]
        if cells.n_obs >= 10 and color:
            tl.umap(cells)
            save("umap_cells", lambda: pl.umap(cells, color, title="Cells"))
        examples = _example_cells(run, cells, n_examples)
        if examples is not None:
            save("example_cells", lambda: pl.cell_gallery(**examples))
    if profiles is not None and profiles.n_obs >= 6:
        color = [c for c in ("compound", "moa") if c in profiles.obs.columns]
        if color:
            tl.umap(profiles, n_neighbors=min(15, profiles.n_obs - 1))
            save("umap_profiles", lambda: pl.umap(profiles, color, title="Well profiles"))
    summary = tables.get("summary")
    if summary is not None and "view" in summary.columns and len(summary):
        save("views", lambda: pl.views(summary))
    maps = {d: tables[f"{d}_map"] for d in ("replicate", "moa") if len(tables.get(f"{d}_map", ()))}
    if maps:
        save("map_vs_q", lambda: pl.map_scatter(maps))
        save("fraction_retrieved", lambda: pl.fraction_retrieved(maps))
    curves = {f"{what} {cell_type}".strip(): table
              for what, key in (("MoA", "moa_nn"), ("compound", "compound_nn")) if len(tables.get(key, ()))
              for cell_type, table in _by_cell_type(tables[key])}
    if curves:
        save("nn_accuracy", lambda: pl.nn_accuracy(curves, title="Nearest-neighbour accuracy"))
    if failed:
        run.skip("figures", "; ".join(failed))
    return written


def _example_cells(run: Run, cells: AnnData, n: int) -> dict[str, Any] | None:
    """Crops, pooling attention and localization of a few cells of one field, recomputed in-process."""
    from .models import CLASS_NAMES
    from .pipeline import field_crops

    first = cells.obs.iloc[0]
    path = (cells.uns.get(Keys.PROVENANCE, {}).get("plates") or {}).get(str(first["plate"]))
    if path is None:
        return None
    instance = run.model.local("cpu")
    plate = next((p for p in run.plates if p.name == str(first["plate"])), path)
    crops, table = field_crops(plate, str(first["well"]), str(first["field"]), preset=run.spec.params,
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


def _by_cell_type(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """A table's rows per cell type; the name is empty when there is only one."""
    if "cell_type" not in table.columns or table["cell_type"].nunique() < 2:
        return [("", table)]
    return [(str(name), part) for name, part in table.groupby("cell_type", sort=True)]


# -- helpers ----------------------------------------------------------------------------------------------
def _inputs(run: Run) -> dict[str, Any]:
    platemap = run.spec.platemap
    return {"plates": [{"name": p.name, "path": str(p.path), "version": getattr(p, "version", None),
                        "wells": len(p.wells)} for p in run.plates],
            "platemap": None if platemap is None or isinstance(platemap, pd.DataFrame) else str(platemap)}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"subcell_scale": __version__, "python": platform.python_version()}
    for name in ("numpy", "torch", "dask", "distributed", "anndata", "zarr"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover
            continue
    return out


def _close(client: Any) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
