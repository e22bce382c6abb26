"""The dynamic batcher as plain code: size and deadline flushes, order, errors, keys."""
import threading
import time

import pytest

from worker.batching import BatchSizeMismatch, DynamicBatcher


class Recorder:
    """A batch function that records each batch and doubles numbers; fails items < 0."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[tuple[object, list]] = []
        self.gate = gate

    def __call__(self, key, items):
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append((key, list(items)))
        return [ValueError(f"negative: {i}") if i < 0 else 2 * i for i in items]


@pytest.fixture
def make():
    made = []

    def factory(run, size, delay):
        batcher = DynamicBatcher(run, max_batch_size=size, max_delay_s=delay).start()
        made.append(batcher)
        return batcher

    yield factory
    for batcher in made:
        batcher.stop(timeout=5)


def test_a_full_batch_flushes_at_once_without_waiting_for_the_deadline(make):
    run = Recorder()
    batcher = make(run, size=4, delay=60)
    futures = [batcher.submit("m", i) for i in range(4)]
    assert [f.result(timeout=5) for f in futures] == [0, 2, 4, 6]
    assert run.batches == [("m", [0, 1, 2, 3])]


def test_a_partial_batch_flushes_at_the_deadline(make):
    run = Recorder()
    batcher = make(run, size=32, delay=0.05)
    started = time.monotonic()
    futures = [batcher.submit("m", i) for i in range(3)]
    assert [f.result(timeout=5) for f in futures] == [0, 2, 4]
    assert time.monotonic() - started >= 0.05
    assert run.batches == [("m", [0, 1, 2])]


def test_a_large_chunk_is_split_into_full_batches_in_submission_order(make):
    gate = threading.Event()
    run = Recorder(gate)
    batcher = make(run, size=4, delay=0.05)
    futures = [batcher.submit("m", i) for i in range(10)]
    gate.set()
    assert [f.result(timeout=5) for f in futures] == [2 * i for i in range(10)]
    sizes = [len(items) for _, items in run.batches]
    assert sizes[:2] == [4, 4] and sum(sizes) == 10
    assert [i for _, items in run.batches for i in items] == list(range(10))


def test_items_from_many_threads_are_merged_into_one_batch(make):
    run = Recorder()
    batcher = make(run, size=8, delay=60)
    results = {}

    def task(n):
        results[n] = batcher.submit("m", n).result(timeout=5)

    threads = [threading.Thread(target=task, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: 2 * n for n in range(8)}
    assert len(run.batches) == 1 and sorted(run.batches[0][1]) == list(range(8))


def test_a_batch_never_mixes_keys(make):
    gate = threading.Event()
    run = Recorder(gate)
    batcher = make(run, size=4, delay=0.01)
    futures = [batcher.submit(("model-a", "fp32") if i % 2 else ("model-b", "bf16"), i)
               for i in range(10)]
    gate.set()
    assert [f.result(timeout=5) for f in futures] == [2 * i for i in range(10)]
    for key, items in run.batches:
        assert {i % 2 for i in items} == {1 if key == ("model-a", "fp32") else 0}
    assert sum(len(items) for _, items in run.batches) == 10


def test_an_item_error_fails_that_item_alone(make):
    batcher = make(Recorder(), size=3, delay=60)
    good, bad, other = batcher.submit("m", 1), batcher.submit("m", -1), batcher.submit("m", 2)
    assert good.result(timeout=5) == 2 and other.result(timeout=5) == 4
    with pytest.raises(ValueError, match="negative: -1"):
        bad.result(timeout=5)


def test_a_failing_or_miscounting_batch_function_fails_every_item_and_the_batcher_goes_on(make):
    calls = []

    def run(key, items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        if len(calls) == 2:
            return [0]
        return items

    batcher = make(run, size=2, delay=0.05)
    first = [batcher.submit("m", i) for i in range(2)]
    for future in first:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(timeout=5)
    second = [batcher.submit("m", i) for i in range(2)]
    for future in second:
        with pytest.raises(BatchSizeMismatch):
            future.result(timeout=5)
    assert [batcher.submit("m", 7).result(timeout=5)] == [7]  # the deadline flushes this one
    stats = batcher.snapshot()
    assert (stats["batches"], stats["items"], stats["failed_batches"]) == (3, 5, 2)


def test_counters_report_batch_sizes_and_fill(make):
    gate = threading.Event()
    batcher = make(Recorder(gate), size=4, delay=0.01)
    futures = [batcher.submit("m", i) for i in range(6)]
    gate.set()
    for future in futures:
        future.result(timeout=5)
    stats = batcher.snapshot()
    assert stats["items"] == 6 and stats["sizes"] == {"2": 1, "4": 1}
    assert stats["mean_batch_size"] == 3 and stats["mean_fill"] == 0.75


def test_stopping_runs_what_is_queued_then_refuses_new_items():
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch_size=8, max_delay_s=60).start()
    futures = [batcher.submit("m", i) for i in range(3)]
    batcher.stop(timeout=5)
    assert [f.result(timeout=0) for f in futures] == [0, 2, 4]
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit("m", 1)


@pytest.mark.parametrize("size, delay", [(0, 0.01), (-3, 0.01), (2.5, 0.01), (4, -1)])
def test_wrong_batch_settings_are_refused_when_the_batcher_is_built(size, delay):
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_batch_size=size, max_delay_s=delay)
