"""Run the fields of a plan through the one scheduler: skip the finished ones, map the rest, record each.

A field is finished when its shard exists with the run's parameter digest and the fingerprint of
the field's image and label files it was made from still matches what is on disk (so a field whose
pixels or labels changed since is recomputed); the shards are the truth, the manifest is rebuilt
from them. The others go through :func:`subcell_scale.distributed.scheduler.map_tasks`, in this
process or on a cluster, with its one retry policy, and each ends in the manifest as done (with its
cell count) or failed (with the error a user needs). Segmentation alone (:func:`segment_fields`) goes
the same way, recorded per field in the manifest's ``segment`` section.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._constants import Files, Status
from .._settings import settings
from ..distributed.scheduler import Stage, map_tasks
from ..rundir import FieldId, RunPath
from ..store import ResultsStore, Shard, verify_shard
from .field import (FieldJob, embed_group, job_fingerprint, label_stamp, open_job_plate, prepare_group, segment_group,
                    write_group)

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from ..models import ResolvedModel

log = logging.getLogger(__name__)


@dataclass
class FieldResults:
    """What became of a run's fields: shards returned in memory (no store), and errors of failed ones."""

    shards: dict[FieldId, Shard] = field(default_factory=dict)
    failed: dict[FieldId, str] = field(default_factory=dict)


def run_fields(plates: Iterable[Sequence[FieldJob]], model: ResolvedModel, client: Client | None,
               store: ResultsStore | None, *, total: int, scratch: Path, device: str | None, retries: int,
               progress: bool | None, fields_per_task: int = 1,
               on_plate: Callable[[str, Sequence[FieldJob]], None] | None = None) -> FieldResults:
    """Embed every field without a finished shard, plate after plate; record each; say when a plate ends.

    Parameters
    ----------
    plates
        Each plate's jobs, in run order; an iterator is consumed as the fields run (a screen's later
        plates are planned and checked for finished fields while its first ones are embedded).
    total
        Fields in all (the progress bar).
    scratch
        Where a model instance is saved for the workers when there is no run directory.
    device
        In-process device of the model (see :func:`subcell_scale._device.resolve_device`).
    retries
        Extra attempts of a field whose error could go away (a field is retried on its own).
    fields_per_task
        Fields embedded together, so that small fields fill the model's batches.
    on_plate
        Called with a plate's name and jobs when its last field has ended (finished fields of a resumed
        run included), after its record is closed: a plate's products can be made then.
    """
    from tqdm.auto import tqdm

    results = FieldResults()
    show = settings.progress if progress is None else progress
    bar = tqdm(total=total, unit="field", desc="embedding", disable=not show)
    plugin = None
    if client is None:
        instance = model.local(device)
        stages = [Stage(prepare_group), Stage(lambda previous: embed_group(previous, instance)), Stage(write_group)]
    else:
        from ..distributed.cluster import GPU_RESOURCE
        from ..distributed.plugin import register_model

        folder = (store.root if store is not None else RunPath(scratch)) / Files.MODEL
        plugin = register_model(client, model.for_workers(folder))
        stages = [Stage(prepare_group, name="prepare"), Stage(embed_group, resources={GPU_RESOURCE: 1}, name="embed"),
                  Stage(write_group, name="write")]
    open_plates: dict[str, tuple[Sequence[FieldJob], list[int]]] = {}  # plate -> its jobs, fields still to end

    def end_plate(name: str) -> None:
        jobs, _ = open_plates.pop(name)
        if store is not None:
            store.close_plate(name, [j.fid for j in jobs])
        if on_plate is not None:
            on_plate(name, jobs)

    def todo() -> Iterator[FieldJob]:
        for jobs in plates:
            if not jobs:
                continue
            finished = _finished(jobs, store)
            pending = [job for job in jobs if job.fid not in finished]
            bar.update(len(jobs) - len(pending))
            if finished:
                log.info("plate %s: %d of %d fields already done", jobs[0].fid.plate, len(finished), len(jobs))
            if store is not None:
                store.set_pending([j.fid for j in pending])
            name = jobs[0].fid.plate
            open_plates[name] = (jobs, [len(pending)])
            if not pending:
                end_plate(name)
                continue
            if plugin is not None:
                shared = replace(pending[0].plan, model_plugin=plugin)
                pending = [replace(job, plan=shared) for job in pending]
            yield from pending

    try:
        for outcome in map_tasks(stages, todo(), client=client, key=lambda job: job.fid.key, retries=retries,
                                 batch=max(1, int(fields_per_task)), progress=bar):
            job = outcome.item
            if outcome.ok:
                _record_done(job, outcome.result, store, results)
            else:
                _record_failed(job, outcome.error, outcome.attempts, store, results)
            left = open_plates[job.fid.plate][1]
            left[0] -= 1
            if left[0] == 0:
                end_plate(job.fid.plate)
    finally:
        bar.close()
        if store is not None:
            store.flush(force=True)
        if plugin is not None:  # the run's model leaves the cluster with it: a worker joining later loads nothing
            from ..distributed.plugin import unregister_model

            unregister_model(client, plugin)
    return results


def segment_fields(jobs: Sequence[FieldJob], client: Client | None, store: ResultsStore | None, *, retries: int,
                   progress: bool | None) -> dict[FieldId, dict[str, Any]]:
    """Segment the fields of ``jobs`` that lack labels (all of them with ``overwrite``), through the one scheduler.

    Returns one record per field (``status`` done / skipped / failed, ``n_cells``, ``labels``,
    ``seconds``, ``error``), also kept in ``store``'s ``segment`` section. A rerun skips the fields
    whose labels exist, so segmentation resumes where it stopped.
    """
    records: dict[FieldId, dict[str, Any]] = {}
    for outcome in map_tasks([Stage(segment_group, name="segment")], jobs, client=client,
                             key=lambda job: job.fid.key, retries=retries, batch=1, progress=progress,
                             desc="segmenting"):
        job = outcome.item
        if outcome.ok:
            record = {**outcome.result, "error": None}
        else:
            record = {"status": Status.FAILED, "n_cells": None, "labels": None, "seconds": None,
                      "error": _message(outcome.error), "attempts": outcome.attempts}
            log.error("segmentation of %s failed: %s", job.where, record["error"])
        records[job.fid] = record
        if store is not None:
            store.record_segmented(job.fid, record)
    if store is not None:
        store.flush(force=True)
    return records


def _record_done(job: FieldJob, summary: dict[str, Any], store: ResultsStore | None, results: FieldResults) -> None:
    if store is not None:
        store.record_done(job.fid, n_cells=summary["n_cells"], dropped=summary["dropped"], seconds=summary["seconds"],
                          **summary.get("facts", {}))
    else:
        results.shards[job.fid] = summary["result"]


def _record_failed(job: FieldJob, error: BaseException, attempts: int, store: ResultsStore | None,
                   results: FieldResults) -> None:
    message = _message(error)
    log.error("field %s failed after %d attempt(s): %s", job.fid, attempts, message)
    results.failed[job.fid] = message
    if store is not None:
        store.record_failed(job.fid, error=message, attempts=attempts)


def _message(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _finished(jobs: Sequence[FieldJob], store: ResultsStore | None) -> set[FieldId]:
    """The fields of one plate whose shard holds them as this run would compute them.

    A field is finished when its record says done with this run's parameter digest, its pixels and
    labels have the fingerprint it was made from (one listing of the plate gives every field's), and
    its shard is there with the size the record kept (one listing of the plate's shards). A complete
    plate is recognised from that alone, without reading a shard; in a plate that was not complete,
    each finished field's shard is also read whole and checked against the sha256 of its record, so
    a shard damaged since is recomputed. Fields without a record (a run directory from before
    records, or a record lost) are checked from their shards, and recorded.
    """
    if store is None or not jobs:
        return set()
    from ..io.fingerprint import plate_fingerprints

    plate_name = jobs[0].fid.plate
    record = store.records.plate(plate_name)
    sizes = _shard_sizes(jobs[0].shard_path)
    if not sizes:  # no shard of this plate yet: nothing to check
        return set()
    plate = open_job_plate(jobs[0])
    fingerprints = plate_fingerprints(plate, [(j.fid.well, j.fid.field) for j in jobs], labels=jobs[0].plan.label_name)
    run_labels = _run_label_stamps(jobs)

    def fingerprint(job: FieldJob) -> str:
        return job_fingerprint(plate, job, fingerprints[(job.fid.well, job.fid.field)], run_labels)

    def check(job: FieldJob) -> dict[str, Any] | None:
        """The facts of a finished field (for its record), or None when it must be computed."""
        known = record.fields.get(job.fid.key, {})
        if known.get("status") == Status.DONE and known.get("sha256") and known.get("digest") == job.plan.digest:
            if known.get("fingerprint") != fingerprint(job):
                log.warning("field %s: its pixels or labels changed on disk since its shard was written; "
                            "recomputing it", job.fid)
                return None
            if sizes.get(job.shard_path.name) != known.get("size"):
                return None  # deleted or truncated since
            if record.complete:
                return known
            return known if verify_shard(job.shard_path, known["sha256"]) is not None else None
        meta = verify_shard(job.shard_path) if job.shard_path.name in sizes else None
        if meta is None or meta.get("digest") != job.plan.digest:
            return None
        if "fingerprint" in meta and meta["fingerprint"] != fingerprint(job):
            log.warning("field %s: its pixels or labels changed on disk since its shard was written; "
                        "recomputing it", job.fid)
            return None
        return {"n_cells": meta["n_cells"], "seconds": meta.get("seconds"),
                "dropped": {k: len(v) for k, v in meta.get("dropped", {}).items()},
                **{k: meta.get(k) for k in ("size", "sha256", "digest", "fingerprint", "segmented", "labels")},
                "recorded": False}

    if record.complete:
        facts = [check(job) for job in jobs]  # no shard is read: listings and the record only
    else:
        with ThreadPoolExecutor(max_workers=8) as pool:
            facts = list(pool.map(check, jobs))
    done = set()
    for job, fact in zip(jobs, facts, strict=True):
        if fact is None:
            continue
        done.add(job.fid)
        if fact.get("recorded", True) is False:
            fact = {k: v for k, v in fact.items() if k != "recorded"}
            store.record_done(job.fid, **fact)
    return done


def _shard_sizes(path: RunPath) -> dict[str, int]:
    """Name -> size of the shards in the folder of ``path`` (one listing; empty when there is none)."""
    folder = RunPath(path.url.rsplit("/", 1)[0] if not path.is_local else str(Path(path.url).parent),
                     path.storage_options)
    try:
        listing = folder.fs.ls(folder.url if folder.is_local else folder.fs._strip_protocol(folder.url), detail=True)
    except FileNotFoundError:
        return {}
    return {str(info["name"]).rstrip("/").rsplit("/", 1)[-1]: int(info.get("size") or 0) for info in listing
            if info.get("type") == "file"}


def _run_label_stamps(jobs: Sequence[FieldJob]) -> dict[str, str]:
    """Name -> stamp of the label files a plate keeps in the run directory (one listing)."""
    folder = jobs[0].plan.labels
    if folder is None:
        return {}
    try:
        listing = folder.fs.ls(folder.url if folder.is_local else folder.fs._strip_protocol(folder.url), detail=True)
    except FileNotFoundError:
        return {}
    return {str(info["name"]).rstrip("/").rsplit("/", 1)[-1]: label_stamp(info) for info in listing}
