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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._constants import Files, Status
from ..distributed.scheduler import Stage, map_tasks
from ..store import FieldId, ResultsStore, RunPath, Shard, shard_meta
from .field import FieldJob, embed_group, job_fingerprint, open_job_plate, prepare_group, segment_group, write_group

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from ..models import ResolvedModel

log = logging.getLogger(__name__)


@dataclass
class FieldResults:
    """What became of a run's fields: shards returned in memory (no store), and errors of failed ones."""

    shards: dict[FieldId, Shard] = field(default_factory=dict)
    failed: dict[FieldId, str] = field(default_factory=dict)


def run_fields(jobs: Sequence[FieldJob], model: ResolvedModel, client: Client | None, store: ResultsStore | None, *,
               scratch: Path, device: str | None, retries: int, progress: bool | None,
               fields_per_task: int = 1) -> FieldResults:
    """Embed every field of ``jobs`` that has no finished shard; record each in ``store``.

    Parameters
    ----------
    scratch
        Where a model instance is saved for the workers when there is no run directory.
    device
        In-process device of the model (see :func:`subcell_scale._device.resolve_device`).
    retries
        Extra attempts of a field whose error could go away (a field is retried on its own).
    fields_per_task
        Fields embedded together, so that small fields fill the model's batches.
    """
    results = FieldResults()
    finished = _finished(jobs, store)
    todo = [job for job in jobs if job.fid not in finished]
    if store is not None:
        store.set_pending([j.fid for j in todo])
        store.flush(force=True)
    if len(todo) < len(jobs):
        log.info("resuming: %d of %d fields already done", len(jobs) - len(todo), len(jobs))
    if not todo:
        return results
    plugin = None
    if client is None:
        instance = model.local(device)
        stages = [Stage(prepare_group), Stage(lambda prep, group: embed_group(prep, group, instance)),
                  Stage(write_group)]
    else:
        from ..distributed.cluster import GPU_RESOURCE
        from ..distributed.plugin import register_model

        folder = (store.root if store is not None else RunPath(scratch)) / Files.MODEL
        plugin = register_model(client, model.for_workers(folder))
        plans = {id(job.plan): replace(job.plan, model_plugin=plugin) for job in todo}
        todo = [replace(job, plan=plans[id(job.plan)]) for job in todo]
        stages = [Stage(prepare_group, name="prepare"), Stage(embed_group, resources={GPU_RESOURCE: 1}, name="embed"),
                  Stage(write_group, name="write")]
    try:
        for outcome in map_tasks(stages, todo, client=client, key=lambda job: job.fid.key, retries=retries,
                                 batch=max(1, int(fields_per_task)), total=len(jobs), done=len(jobs) - len(todo),
                                 progress=progress, desc="embedding"):
            job = outcome.item
            if outcome.ok:
                _record_done(job, outcome.result, store, results)
            else:
                _record_failed(job, outcome.error, outcome.attempts, store, results)
    finally:
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
        store.record_done(job.fid, n_cells=summary["n_cells"], dropped=summary["dropped"], seconds=summary["seconds"])
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
    """The fields whose shard exists with this run's digest and an unchanged fingerprint.

    Shards' metadata and fingerprints (listings of each field's files) are read in threads: milliseconds
    each locally, one request each on object storage; a finished field the manifest does not know
    yet is recorded.
    """
    if store is None:
        return set()

    def finished_meta(job: FieldJob) -> dict[str, Any] | None:
        """The shard's metadata when it holds the field as this run would compute it, else None."""
        meta = shard_meta(job.shard_path)
        if meta is None or meta.get("digest") != job.plan.digest:
            return None
        if "fingerprint" not in meta:
            return meta
        if job_fingerprint(open_job_plate(job), job) != meta["fingerprint"]:
            log.warning("field %s: its pixels or labels changed on disk since its shard was written; "
                        "recomputing it", job.fid)
            return None
        return meta

    with ThreadPoolExecutor(max_workers=8) as pool:
        metas = list(pool.map(finished_meta, jobs))
    done = set()
    for job, meta in zip(jobs, metas, strict=True):
        if meta is None:
            continue
        done.add(job.fid)
        if store.field(job.fid).get("status") != Status.DONE:
            store.record_done(job.fid, n_cells=meta["n_cells"], seconds=meta.get("seconds"),
                              dropped={k: len(v) for k, v in meta.get("dropped", {}).items()})
    return done
