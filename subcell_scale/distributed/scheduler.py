"""One way to fan work out over fields: in this process or on any Dask cluster, with the same guarantees.

:func:`map_tasks` runs a short chain of functions per item (embedding: a CPU stage that reads and
crops, then a GPU stage that embeds and writes; segmentation: one stage) and yields an
:class:`Outcome` per item as it finishes, so the caller records results while the plate streams
through:

- a bounded window of items is in flight at a time (about two fields per worker thread), so neither
  the scheduler nor the client grows with the plate, and enough are prepared ahead to keep a GPU busy;
  ended items are handled, and replaced, half a window at a time: their results come in one request
  and their successors' chains go out as one graph, so the client's work per item stays small;
- small items travel in batches when asked (fields whose crops share the model's batches), and an
  item of a batch fails alone (:class:`Failure`);
- a failed item is retried, alone, ``retries`` times unless its error says the same input would fail
  again (``retriable = False`` on :mod:`subcell_scale.errors` classes: a missing channel, missing
  labels): the one retry policy of every stage;
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

    The first stage is called as ``func(item)``, each later one as ``func(previous_result)``: a stage
    hands on what the next needs, so an item is sent to the cluster once, with its first task.
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


@dataclass
class Failure:
    """An item of a batch that failed on its own: the batch's task returns it in that item's place, and
    the batch's other items carry on."""

    error: BaseException


def retriable(exc: BaseException) -> bool:
    """Whether running the same item again could succeed (deterministic errors say they cannot)."""
    return bool(getattr(exc, "retriable", True))


@dataclass
class _Task:
    """Items that run as one task (one item, or a batch), and the attempt they are on."""

    items: tuple[int, ...]
    attempt: int = 1


def map_tasks(stages: Sequence[Stage], items: Iterable[Any], *, client: Client | None = None,
              key: Callable[[Any], str] = str, retries: int = 1, batch: int | None = None,
              total: int | None = None, done: int = 0, progress: bool | Any = None,
              desc: str = "fields") -> Iterator[Outcome]:
    """Run the chain ``stages`` on every item and yield each item's :class:`Outcome` as it finishes.

    This is the one retry policy of a run: an item whose error is retriable (not a
    :mod:`subcell_scale.errors` class that says the same input fails again) runs again, alone, up to
    ``retries`` more times, whether it ran alone or in a batch, in this process or on a cluster.

    ``items`` may be a generator: items are taken from it as the window has room, so a screen's later
    plates are planned while its first fields run, and only the items in flight are held.

    Parameters
    ----------
    stages
        The functions of one item's chain, in order.
    items
        Small, picklable descriptions of the work (field jobs), a sequence or an iterator.
    client
        A ``distributed.Client``; None runs the items one after the other in this process.
    key
        A name for an item, unique in the run; task keys on the cluster are built from it, so the
        dashboard shows which field a task is.
    retries
        Extra attempts of an item whose error is retriable.
    batch
        None: each task is one item (stages take the item). A number: tasks are batches of up to that
        many items (stages take a tuple of items; the last returns one result per item, a
        :class:`Failure` for an item that failed alone), so that small fields fill a model's batches.
    total, done
        Size of the progress bar (default: the number of items, when they are a sequence) and how much
        of it was done before (a resumed run).
    progress
        Show a progress bar over items (default :attr:`subcell_scale.settings.progress`), or a bar to
        advance (a ``tqdm`` the caller also advances).
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
    if batch is not None and int(batch) < 1:
        msg = f"batch must be None or >= 1, got {batch}"
        raise ConfigError(msg)
    if total is None and isinstance(items, Sequence):
        total = done + len(items)
    own = progress is None or isinstance(progress, bool)
    show = settings.progress if progress is None else progress
    bar = tqdm(total=total, initial=done, unit="field", desc=desc, disable=not show) if own else progress
    run = _Runner(stages, iter(items), key, int(retries), batch=batch)
    try:
        outcomes = run.in_process() if client is None else run.on_cluster(client)
        for outcome in outcomes:
            bar.update(1)
            yield outcome
    finally:
        if own:
            bar.close()


class _Runner:
    """Tasks of items through the stages; each item's end becomes an :class:`Outcome`, a retry a new task.

    Items are taken from their iterator only as tasks are made, and dropped once they have ended, so
    the runner holds the items in flight, never the whole run.
    """

    def __init__(self, stages: Sequence[Stage], items: Iterator[Any], key: Callable[[Any], str], retries: int, *,
                 batch: int | None) -> None:
        self.stages, self.key, self.retries = stages, key, retries
        self.batched, self.size = batch is not None, 1 if batch is None else int(batch)
        self._source = items
        self._items: dict[int, Any] = {}
        self._counter = itertools.count()

    def next_task(self) -> _Task | None:
        """A new task of up to ``size`` items taken from the iterator, or None when it is exhausted."""
        taken = list(itertools.islice(self._source, self.size))
        if not taken:
            return None
        indices = tuple(next(self._counter) for _ in taken)
        self._items.update(zip(indices, taken, strict=True))
        return _Task(indices)

    def argument(self, task: _Task) -> Any:
        return tuple(self._items[i] for i in task.items) if self.batched else self._items[task.items[0]]

    def name(self, task: _Task) -> str:
        first = self.key(self._items[task.items[0]])
        return first if len(task.items) == 1 else f"{first}+{len(task.items) - 1}"

    def settle(self, task: _Task, result: Any = None, error: BaseException | None = None
               ) -> tuple[list[Outcome], list[_Task]]:
        """The outcomes a finished task gives, and the tasks of its items that run again."""
        if error is not None:
            per_item: list[Any] = [Failure(error)] * len(task.items)
        else:
            per_item = list(result) if self.batched else [result]
        outcomes, again = [], []
        for index, value in zip(task.items, per_item, strict=True):
            item = self._items[index]
            if not isinstance(value, Failure):
                outcomes.append(Outcome(item, result=value, attempts=task.attempt))
            elif task.attempt <= self.retries and retriable(value.error):
                log.warning("%s failed (%s), retrying", self.key(item), _one_line(value.error))
                again.append(_Task((index,), task.attempt + 1))
                continue
            else:
                outcomes.append(Outcome(item, error=value.error, attempts=task.attempt))
            del self._items[index]
        return outcomes, again

    def in_process(self) -> Iterator[Outcome]:
        queue: list[_Task] = []
        while True:
            task = queue.pop() if queue else self.next_task()
            if task is None:
                return
            argument = self.argument(task)
            try:
                result = self.stages[0].func(argument)
                for stage in self.stages[1:]:
                    result = stage.func(result)
            except Exception as exc:  # noqa: BLE001 - one item's failure must not stop the others
                outcomes, again = self.settle(task, error=exc)
            else:
                outcomes, again = self.settle(task, result)
            queue.extend(reversed(again))
            yield from outcomes

    def on_cluster(self, client: Client) -> Iterator[Outcome]:
        from dask._task_spec import Task, TaskRef
        from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
        from distributed import as_completed

        resources = [_usable_resources(client, stage.resources) for stage in self.stages]
        token = uuid.uuid4().hex[:8]  # keys of this call never meet a finished task of an earlier one
        threads = sum(client.nthreads().values()) or 1
        window = max(2, math.ceil(max(4, 2 * threads) / self.size))
        step = max(1, window // 2)  # ended tasks handled (and replaced) together: fewer, larger messages
        running: dict[Any, _Task] = {}

        def submit(tasks: list[_Task]) -> list[Any]:
            """The tasks' chains as one graph, a layer per stage (one message, however many tasks)."""
            if not tasks:
                return []
            tags = [self.name(task).replace("/", ":") for task in tasks]
            layers: dict[str, MaterializedLayer] = {}
            inputs: list[Any] = [self.argument(task) for task in tasks]
            for n, (stage, res) in enumerate(zip(self.stages, resources, strict=True)):
                keys = [f"{stage.name}-{tag}-{token}-{task.attempt}" for tag, task in zip(tags, tasks, strict=True)]
                tasks_of_stage = {k: Task(k, stage.func, x) for k, x in zip(keys, inputs, strict=True)}
                layers[f"{n}"] = MaterializedLayer(tasks_of_stage, annotations={"resources": res} if res else None)
                inputs = [TaskRef(k) for k in keys]
            graph = HighLevelGraph(layers, {f"{n}": {f"{n - 1}"} if n else set() for n in range(len(layers))})
            # only the last stage's futures exist: the scheduler holds the others for their dependents
            futures = client.get(graph, [ref.key for ref in inputs], sync=False, fifo_timeout=0)
            running.update(zip(futures, tasks, strict=True))
            return futures

        first = [task for task in (self.next_task() for _ in range(window)) if task is not None]
        queue = as_completed(submit(first))
        ended: list[Any] = []
        for batch in queue.batches():
            ended += batch
            if len(ended) < min(step, len(running)):
                continue  # enough still in flight: wait for more to end
            done = [future for future in ended if future.status == "finished"]
            results = dict(zip(done, client.gather(done), strict=True)) if done else {}  # one request
            more: list[_Task] = []
            for future in ended:
                task = running.pop(future)
                if future in results:
                    outcomes, again = self.settle(task, results[future])
                else:
                    outcomes, again = self.settle(task, error=future.exception())
                future.release()
                more += again
                yield from outcomes
                if not again:
                    nxt = self.next_task()
                    if nxt is not None:
                        more.append(nxt)
            ended = []
            queue.update(submit(more))


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
