"""The one scheduler: the same outcomes in-process and on a cluster, retries, resources, waiting for workers."""

from __future__ import annotations

import logging
import threading

import pytest
from distributed import Client, LocalCluster

from subcell_scale.distributed.scheduler import Stage, map_tasks, wait_for_workers
from subcell_scale.errors import ChannelMismatchError, PlateFormatError

ATTEMPTS: dict[int, int] = {}
_LOCK = threading.Lock()


def _square(item: int) -> tuple[int, int]:
    if item == 3:
        raise ChannelMismatchError("item 3 lacks a channel")  # deterministic: never retried
    if item == 5:
        with _LOCK:
            ATTEMPTS[item] = ATTEMPTS.get(item, 0) + 1
            first = ATTEMPTS[item] == 1
        if first:
            raise PlateFormatError("item 5: damaged chunk")  # retriable: the retry succeeds
    return item, item * item


def _plus_one(previous: tuple[int, int]) -> tuple[int, int]:
    item, square = previous
    return item, square + 1


SEEN: set[int] = set()


def _flaky(item: int) -> int:
    """Fails on the first attempt of every item (threaded workers share this module's state)."""
    with _LOCK:
        first = item not in SEEN
        SEEN.add(item)
    if first:
        raise OSError(f"item {item}: transient")
    return item


def _outcomes(client=None, retries=1) -> dict:
    ATTEMPTS.clear()
    stages = [Stage(_square, name="square"), Stage(_plus_one, resources={"GPU": 1}, name="plus")]
    return {o.item: o for o in map_tasks(stages, range(8), client=client, retries=retries, progress=False)}


def _check(outcomes: dict) -> None:
    assert sorted(outcomes) == list(range(8))
    for item, outcome in outcomes.items():
        if item == 3:
            assert not outcome.ok and isinstance(outcome.error, ChannelMismatchError) and outcome.attempts == 1
        else:
            assert outcome.ok and outcome.result == (item, item * item + 1)
    assert outcomes[5].attempts == 2


def test_in_process_chains_stages_and_retries_only_what_could_succeed():
    _check(_outcomes())
    no_retry = _outcomes(retries=0)
    assert not no_retry[5].ok and isinstance(no_retry[5].error, PlateFormatError)


def test_a_cluster_gives_the_same_outcomes():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, resources={"GPU": 1},
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        _check(_outcomes(client))


def test_workers_without_the_gpu_resource_are_used_with_one_warning(caplog):
    # what a Jupyter user types first: no resources declared; it must not wait forever
    with Client(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as client:
        address = client.scheduler.address
        with caplog.at_level(logging.WARNING, logger="subcell_scale"):
            outcomes = _outcomes(client)
    _check(outcomes)
    warnings = [r.getMessage() for r in caplog.records if "offers the resource" in r.getMessage()]
    assert len(warnings) == 1 and "--resources GPU=1" in warnings[0] and address in warnings[0]


def test_retries_on_a_cluster_resubmit_the_item():
    with Client(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as client:
        SEEN.clear()
        outcomes = list(map_tasks([Stage(_flaky)], range(3), client=client, retries=1, progress=False))
        assert sorted(o.result for o in outcomes) == [0, 1, 2] and {o.attempts for o in outcomes} == {2}
        SEEN.clear()
        outcomes = list(map_tasks([Stage(_flaky)], range(3), client=client, retries=0, progress=False))
        assert all(isinstance(o.error, OSError) for o in outcomes)


def test_a_cluster_without_workers_is_waited_for_then_named(capsys):
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        with pytest.raises(TimeoutError, match=f"no worker joined the cluster at {client.scheduler.address}"):
            wait_for_workers(client, timeout=1)
        assert "waiting for workers" in capsys.readouterr().out
        cluster.scale(1)
        assert len(wait_for_workers(client, timeout=30)) == 1


def _batch_square(batch: tuple[int, ...]) -> list:
    """A batch's results, one per item; item 3 fails alone and item 5 fails once."""
    from subcell_scale.distributed.scheduler import Failure

    out = []
    for item in batch:
        try:
            out.append(_square(item)[1])
        except Exception as exc:  # noqa: BLE001 - the item's failure travels in its place
            out.append(Failure(exc))
    return out


@pytest.mark.parametrize("cluster", [False, True])
def test_an_item_of_a_batch_fails_and_is_retried_alone(cluster):
    """Batches share the one retry policy: the failed item runs again by itself, the others are done once."""
    def outcomes(client):
        ATTEMPTS.clear()
        return {o.item: o for o in map_tasks([Stage(_batch_square)], range(8), client=client, retries=1, batch=3,
                                             progress=False)}

    if cluster:
        with Client(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as client:
            result = outcomes(client)
    else:
        result = outcomes(None)
    assert sorted(result) == list(range(8))
    assert not result[3].ok and isinstance(result[3].error, ChannelMismatchError) and result[3].attempts == 1
    assert result[5].ok and result[5].result == 25 and result[5].attempts == 2 and ATTEMPTS[5] == 2
    assert all(result[i].ok and result[i].result == i * i and result[i].attempts == 1 for i in (0, 1, 2, 4, 6, 7))



def _on_worker(previous: object) -> str:
    from distributed import get_worker

    return get_worker().name


def test_a_stage_asking_for_the_gpu_runs_only_where_a_worker_offers_it():
    """The resource reaches the scheduler (dask drops annotations on some paths): with one worker offering
    ``GPU`` and one not, every GPU task runs on the first."""
    from distributed import Scheduler, SpecCluster, Worker

    workers = {"gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
               "cpu": {"cls": Worker, "options": {"nthreads": 2}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        stages = [Stage(_on_worker, name="any"), Stage(_on_worker, resources={"GPU": 1}, name="gpu")]
        outcomes = list(map_tasks(stages, range(12), client=client, progress=False))
    assert len(outcomes) == 12 and {o.result for o in outcomes} == {"gpu"}
