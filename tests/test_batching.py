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
    futures = [
        batcher.submit(("model-a", "fp32") if i % 2 else ("model-b", "bf16"), i) for i in range(10)
    ]
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


class Engine:
    """A key that allows two batches at once, as the OpenVINO engine does."""

    concurrent_batches = 2


class Blocking:
    """A batch function whose batches run until released; records which ran at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.batches = []

    def __call__(self, key, items):
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.batches.append(list(items))
        self.started.release()
        assert self.release.acquire(timeout=5)
        with self.lock:
            self.running -= 1
        return items


def test_an_engine_that_takes_two_batches_gets_its_next_full_batch_while_one_runs():
    run = Blocking()
    batcher = DynamicBatcher(run, max_batch_size=2, max_delay_s=60, concurrency=2).start()
    key = Engine()
    futures = [batcher.submit(key, i) for i in range(4)]
    assert run.started.acquire(timeout=5) and run.started.acquire(timeout=5)  # both running
    assert run.batches == [[0, 1], [2, 3]] and run.most_at_once == 2
    run.release.release()
    run.release.release()
    assert [f.result(timeout=5) for f in futures] == [0, 1, 2, 3]
    batcher.stop(timeout=5)


def test_a_partial_batch_waits_behind_a_running_one_and_may_still_fill():
    run = Blocking()
    batcher = DynamicBatcher(run, max_batch_size=3, max_delay_s=0.01, concurrency=2).start()
    key = Engine()
    first = [batcher.submit(key, i) for i in range(3)]
    assert run.started.acquire(timeout=5)
    late = [batcher.submit(key, 3)]
    time.sleep(0.1)  # well past the deadline: still not taken, as a batch of key runs
    assert run.batches == [[0, 1, 2]]
    late += [batcher.submit(key, 4), batcher.submit(key, 5)]  # fills it: taken at once
    assert run.started.acquire(timeout=5)
    assert run.batches == [[0, 1, 2], [3, 4, 5]]
    run.release.release()
    run.release.release()
    assert [f.result(timeout=5) for f in first + late] == list(range(6))
    batcher.stop(timeout=5)


def test_a_key_that_does_not_say_it_takes_two_runs_one_batch_at_a_time():
    run = Blocking()
    batcher = DynamicBatcher(run, max_batch_size=2, max_delay_s=60, concurrency=2).start()
    futures = [batcher.submit("tensorflow", i) for i in range(4)]
    for _ in range(2):
        assert run.started.acquire(timeout=5)
        time.sleep(0.05)  # a second batch, if it were allowed, would have started by now
        assert run.running == 1
        run.release.release()
    assert [f.result(timeout=5) for f in futures] == [0, 1, 2, 3]
    assert run.most_at_once == 1
    batcher.stop(timeout=5)


def test_busy_time_counts_overlapping_batches_once():
    run = Blocking()
    batcher = DynamicBatcher(run, max_batch_size=1, max_delay_s=60, concurrency=2).start()
    key = Engine()
    started = time.monotonic()
    futures = [batcher.submit(key, i) for i in range(2)]
    assert run.started.acquire(timeout=5) and run.started.acquire(timeout=5)
    time.sleep(0.2)
    run.release.release()
    run.release.release()
    for future in futures:
        future.result(timeout=5)
    wall = time.monotonic() - started
    batcher.stop(timeout=5)
    stats = batcher.snapshot()
    assert stats["batches"] == 2
    assert 0.2 <= stats["busy_seconds"] <= wall  # two batches of ≥ 0.2 s each, side by side
