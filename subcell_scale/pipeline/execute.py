"""Run the fields of a plan: skip the finished ones, map the rest, record each as it ends.

A field is finished when its shard exists with the run's parameter digest and the fingerprint of
the field's image and label files it was made from still matches what is on disk (so a field whose
pixels or labels changed since is recomputed); the shards are the truth, the manifest is rebuilt
from them. The others go through
:func:`subcell_scale.distributed.scheduler.map_tasks`, in this process or on a cluster, and each
ends in the manifest as done (with its cell count) or failed (with the error a user needs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._constants import Files, Status
from ..distributed.scheduler import Stage, map_tasks, retriable
from ..store import FieldId, ResultsStore, RunPath, Shard, shard_meta
from .field import FieldFailure, FieldJob, embed_group, prepare_group, write_group

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from ..io import Plate
    from ..models import ResolvedModel

log = logging.getLogger(__name__)


@dataclass
class FieldResults:
    """What became of a run's fields: shards returned in memory (no store), and errors of failed ones."""

    shards: dict[FieldId, Shard] = field(default_factory=dict)
    failed: dict[FieldId, str] = field(default_factory=dict)


def run_fields(jobs: Sequence[FieldJob], model: ResolvedModel, client: Client | None, store: ResultsStore | None, *,
               scratch: Path, device: str | None, retries: int, progress: bool | None,
               plates: Sequence[Plate] = (), fields_per_task: int = 1) -> FieldResults:
    """Compute every field of ``jobs`` that has no finished shard; record each in ``store``.

    Parameters
    ----------
    scratch
        Where a model instance is saved for the workers when there is no run directory.
    device
        In-process device of the model (``"cuda"``, ``"cpu"``; default CUDA when present).
    retries
        Extra attempts of a field whose error could go away (a field is retried on its own).
    plates
        The run's plates, to fingerprint the fields whose shard is there (resume).
    fields_per_task
        Fields embedded together, so that small fields fill the model's batches.
    """
    results = FieldResults()
    finished = _finished(jobs, store, {p.name: p for p in plates})
    todo = [job for job in jobs if job.fid not in finished]
    if store is not None:
        store.set_pending([j.fid for j in todo])
        store.flush(force=True)
    if len(todo) < len(jobs):
        log.info("resuming: %d of %d fields already done", len(jobs) - len(todo), len(jobs))
    if not todo:
        return results
    if client is None:
        instance = model.local(device)
        stages = [Stage(prepare_group), Stage(lambda prep, group: embed_group(prep, group, instance)),
                  Stage(write_group)]
    else:
        from ..distributed.cluster import GPU_RESOURCE
        from ..distributed.plugin import register_model

        folder = (store.root if store is not None else RunPath(scratch)) / Files.MODEL
        plugin = register_model(client, model.for_workers(folder))
        todo = [replace(job, model_plugin=plugin) for job in todo]
        stages = [Stage(prepare_group, name="prepare"), Stage(embed_group, resources={GPU_RESOURCE: 1}, name="embed"),
                  Stage(write_group, name="write")]
    attempts = dict.fromkeys((job.fid for job in todo), 0)
    try:
        pending, size, bar = todo, max(1, int(fields_per_task)), {"total": len(jobs), "done": len(jobs) - len(todo)}
        while pending:
            retry = []
            groups = [tuple(pending[i:i + size]) for i in range(0, len(pending), size)]
            for outcome in map_tasks(stages, groups, client=client, key=_group_key, retries=0, size=len,
                                     progress=progress, desc="embedding", **bar):
                summaries = outcome.result if outcome.ok else [FieldFailure(outcome.error)] * len(outcome.item)
                for job, summary in zip(outcome.item, summaries, strict=True):
                    attempts[job.fid] += 1
                    if not isinstance(summary, FieldFailure):
                        _record_done(job, summary, store, results)
                    elif attempts[job.fid] <= retries and retriable(summary.error):
                        log.warning("field %s failed (%s), retrying", job.fid, _message(summary.error))
                        retry.append(job)
                    else:
                        _record_failed(job, summary.error, attempts[job.fid], store, results)
            pending, size, bar = retry, 1, {"total": len(retry), "done": 0}
    finally:
        if store is not None:
            store.flush(force=True)
    return results


def _group_key(group: tuple[FieldJob, ...]) -> str:
    return group[0].fid.key if len(group) == 1 else f"{group[0].fid.key}+{len(group) - 1}"


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


def _finished(jobs: Sequence[FieldJob], store: ResultsStore | None, plates: dict[str, Plate]) -> set[FieldId]:
    """The fields whose shard exists with this run's digest and an unchanged fingerprint.

    Shards' metadata and fingerprints (listings of each field's files) are read in threads: milliseconds
    each locally, one request each on object storage; a finished field the manifest does not know
    yet is recorded.
    """
    if store is None:
        return set()
    from ..io import field_fingerprint

    def finished_meta(job: FieldJob) -> dict[str, Any] | None:
        """The shard's metadata when it holds the field as this run would compute it, else None."""
        meta = shard_meta(job.shard_path)
        if meta is None or meta.get("digest") != job.digest:
            return None
        plate = plates.get(job.fid.plate)
        if plate is None or "fingerprint" not in meta:
            return meta
        if field_fingerprint(plate, job.fid.well, job.fid.field, labels=job.label_name) != meta["fingerprint"]:
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
