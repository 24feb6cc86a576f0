"""One way to fan work out over fields: in this process or on any Dask cluster, with the same guarantees.

:func:`map_tasks` runs a short chain of functions per item (embedding: a CPU stage that reads and
crops, then a GPU stage that embeds and writes; segmentation: one stage) and yields an
:class:`Outcome` per item as it finishes, so the caller records results while the plate streams
through:

- a bounded window of items is in flight at a time (about two fields per worker thread), so neither
  the scheduler nor the client grows with the plate, and enough are prepared ahead to keep a GPU busy;
- a failed item is retried ``retries`` times unless its error says the same input would fail again
  (``retriable = False`` on :mod:`subcell_scale.errors` classes: a missing channel, missing labels);
- a stage that asks for a worker resource (``GPU``) gets it where workers offer it; on a cluster
  whose workers offer none (``Client(n_workers=1)``, workers started without ``--resources GPU=1``),
  the stage runs on any worker with one warning instead of waiting forever; a cluster with no worker
  yet is waited for, visibly, up to :attr:`subcell_scale.settings.worker_timeout` seconds;
- progress is one bar over items.

Only names and small records travel: items are frozen job descriptions (paths and parameters),
and stage results move from worker to worker without passing through the client.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._settings import settings
from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One function of an item's chain and the worker resources it holds while it runs.

    The first stage is called as ``func(item)``, each later one as ``func(previous_result, item)``.
    """

    func: Callable[..., Any]
    resources: Mapping[str, float] | None = None
    name: str = "task"


@dataclass
class Outcome:
    """How one item ended: its last stage's ``result``, or the ``error`` of its last attempt."""

    item: Any
    result: Any = None
    error: BaseException | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


def retriable(exc: BaseException) -> bool:
    """Whether running the same item again could succeed (deterministic errors say they cannot)."""
    return bool(getattr(exc, "retriable", True))


def map_tasks(stages: Sequence[Stage], items: Iterable[Any], *, client: Client | None = None,
              key: Callable[[Any], str] = str, retries: int = 1, size: Callable[[Any], int] | None = None,
              total: int | None = None, done: int = 0,
              progress: bool | None = None, desc: str = "fields") -> Iterator[Outcome]:
    """Run the chain ``stages`` on every item and yield each item's :class:`Outcome` as it finishes.

    Parameters
    ----------
    stages
        The functions of one item's chain, in order.
    items
        Small, picklable descriptions of the work (field jobs).
    client
        A ``distributed.Client``; None runs the items one after the other in this process.
    key
        A name for an item, unique in the run; task keys on the cluster are built from it, so the
        dashboard shows which field a task is.
    retries
        Extra attempts of an item whose error is retriable.
    size
        How many units an item counts for (the fields of a group), on the progress bar and in the
        window: about two units per worker thread are in flight at once.
    total, done
        Size of the progress bar and how much of it was done before (a resumed run).
    progress
        Show a progress bar (default :attr:`subcell_scale.settings.progress`).
    desc
        Label of the progress bar.
    """
    from tqdm.auto import tqdm

    if not stages:
        msg = "map_tasks needs at least one stage"
        raise ConfigError(msg)
    if int(retries) < 0:
        msg = f"retries must be >= 0, got {retries}"
        raise ConfigError(msg)
    items = list(items)
    weight = size or (lambda item: 1)
    show = settings.progress if progress is None else progress
    bar = tqdm(total=done + sum(weight(i) for i in items) if total is None else total, initial=done, unit="field",
               desc=desc, disable=not show)
    try:
        if client is None:
            outcomes = _in_process(stages, items, key, int(retries))
        else:
            units = sum(weight(i) for i in items) / max(1, len(items))
            outcomes = _on_cluster(stages, items, client, key, int(retries), units)
        for outcome in outcomes:
            bar.update(weight(outcome.item))
            yield outcome
    finally:
        bar.close()


def _in_process(stages: Sequence[Stage], items: list[Any], key: Callable[[Any], str], retries: int
                ) -> Iterator[Outcome]:
    for item in items:
        for attempt in itertools.count(1):
            try:
                result = stages[0].func(item)
                for stage in stages[1:]:
                    result = stage.func(result, item)
            except Exception as exc:  # noqa: BLE001 - one item's failure must not stop the others
                if attempt <= retries and retriable(exc):
                    log.warning("%s failed (%s), retrying", key(item), _one_line(exc))
                    continue
                yield Outcome(item, error=exc, attempts=attempt)
            else:
                yield Outcome(item, result=result, attempts=attempt)
            break


def _on_cluster(stages: Sequence[Stage], items: list[Any], client: Client, key: Callable[[Any], str],
                retries: int, units_per_item: float) -> Iterator[Outcome]:
    from distributed import as_completed

    resources = [_usable_resources(client, stage.resources) for stage in stages]
    token = uuid.uuid4().hex[:8]  # keys of this call never meet a finished task of an earlier one
    threads = sum(client.nthreads().values()) or 1
    window = max(2, math.ceil(max(4, 2 * threads) / max(1.0, units_per_item)))
    pending = iter(items)
    running: dict[Any, tuple[Any, list[Any], int]] = {}

    def submit(item: Any, attempt: int) -> Any:
        tag = key(item).replace("/", ":")
        futures: list[Any] = []
        previous: tuple[Any, ...] = ()
        for stage, res in zip(stages, resources, strict=True):
            future = client.submit(stage.func, *previous, item, key=f"{stage.name}-{tag}-{token}-{attempt}", pure=False,
                                   resources=res)
            futures.append(future)
            previous = (future,)
        running[futures[-1]] = (item, futures, attempt)
        return futures[-1]

    queue = as_completed([submit(item, 1) for item in itertools.islice(pending, window)])
    for future in queue:
        item, futures, attempt = running.pop(future)
        if future.status == "finished":
            outcome = Outcome(item, result=future.result(), attempts=attempt)
        else:
            exc = future.exception()
            if attempt <= retries and retriable(exc):
                log.warning("%s failed (%s), retrying", key(item), _one_line(exc))
                queue.add(submit(item, attempt + 1))
                _release(futures)
                continue
            outcome = Outcome(item, error=exc, attempts=attempt)
        _release(futures)
        yield outcome
        nxt = next(pending, None)
        if nxt is not None:
            queue.add(submit(nxt, 1))


def _release(futures: list[Any]) -> None:
    for future in futures:
        future.release()


def _usable_resources(client: Client, wanted: Mapping[str, float] | None) -> dict[str, float] | None:
    """``wanted`` where some worker offers it; None (any worker) where none does, said once."""
    if not wanted:
        return None
    workers = wait_for_workers(client)
    offering = [a for a, info in workers.items() if all(k in (info.get("resources") or {}) for k in wanted)]
    if offering:
        if len(offering) < len(workers):
            log.info("%d of %d workers offer %s; those stages run there", len(offering), len(workers),
                     ", ".join(wanted))
        return dict(wanted)
    names = ", ".join(f"{k}={v:g}" for k, v in wanted.items())
    log.warning("no worker of the cluster at %s offers the resource %s: embedding runs on the workers' CPUs. "
                "For GPUs, start workers with `dask worker ... --resources %s` (or use subcell_scale.get_client, "
                "which sets it)", client.scheduler.address, names, names.replace(", ", " "))
    return None


def wait_for_workers(client: Client, timeout: float | None = None) -> dict[str, Any]:
    """The cluster's workers, waiting (with a message) while a starting or scaling cluster has none.

    Raises
    ------
    TimeoutError
        No worker joined within ``timeout`` seconds (default
        :attr:`subcell_scale.settings.worker_timeout`); the message names the scheduler.
    """
    timeout = settings.worker_timeout if timeout is None else timeout
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if workers:
        return workers
    address = client.scheduler.address
    log.warning("waiting for workers to join the cluster at %s (up to %.0f s)", address, timeout)
    print(f"waiting for workers to join the cluster at {address} ...", flush=True)
    started = time.monotonic()
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError as exc:
        msg = (f"no worker joined the cluster at {address} within {timeout:.0f} s; check that workers are "
               "starting (job queue, adaptive scaling) or raise subcell_scale.settings.worker_timeout")
        raise TimeoutError(msg) from exc
    log.info("a worker joined after %.1f s", time.monotonic() - started)
    return client.scheduler_info(n_workers=-1).get("workers", {})


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
