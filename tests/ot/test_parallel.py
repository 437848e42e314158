import threading
import time

import numpy as np
import pytest
import torch

import mumatch as mm
from mumatch.ot import _parallel


@pytest.mark.parametrize(("n_rows", "step", "n_workers"), [(1, 1, 2), (10, 3, 2), (97, 8, 4), (1000, 7, 3), (5, 10, 8)])
def test_row_ranges_cover_every_row_once_cut_at_blocks(n_rows, step, n_workers):
    ranges = _parallel.row_ranges(n_rows, step, n_workers)
    assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
    assert all(hi > lo for lo, hi in ranges)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(ranges[:-1], ranges[1:], strict=True))
    assert all(lo % step == 0 for lo, _ in ranges)
    n_blocks = -(-n_rows // step)
    assert len(ranges) <= max(1, min(n_workers, n_blocks // _parallel.MIN_BLOCKS_PER_WORKER))


def test_row_ranges_give_each_worker_enough_blocks():
    # 16 blocks and a minimum of 8 per worker: two workers, not eight.
    assert len(_parallel.row_ranges(16 * 5, 5, 8)) == 2
    assert len(_parallel.row_ranges(3, 1, 8)) == 1


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_map_row_ranges_returns_in_row_order_on_single_threaded_workers(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    seen = []
    try:
        parts = _parallel.map_row_ranges(
            lambda lo, hi: seen.append(torch.get_num_threads()) or torch.arange(lo, hi), 80, 2, torch.device("cpu")
        )
        assert torch.get_num_threads() == threads  # the caller's count is never touched
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(torch.cat(parts), torch.arange(80))
    assert len(parts) == threads
    # Workers run torch on one thread each (a single range runs on the caller's).
    assert seen == ([threads] if threads == 1 else [1] * threads)


def test_workers_leave_the_default_of_later_threads_alone():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _parallel._pools.clear()  # a new pool: its workers set their own count to 1 as they start
        _parallel.map_row_ranges(lambda lo, hi: None, 80, 2, torch.device("cpu"))
        counts = []
        later = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert counts == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_a_forked_process_gets_its_own_pool(monkeypatch):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = _parallel._pool(2)
        assert _parallel._pool(2) is first
        monkeypatch.setattr(_parallel.os, "getpid", lambda: -1)  # as in a child: the parent's threads are not there
        second = _parallel._pool(2)
        assert second is not first
        assert second.submit(lambda: 7).result(timeout=10) == 7
    finally:
        torch.set_num_threads(previous)


def test_map_row_ranges_raises_a_workers_error_after_every_worker_finished():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    finished = []

    def work(lo, hi):
        if lo == 0:
            raise FloatingPointError("worker")
        time.sleep(0.2)
        finished.append(lo)
        return lo

    try:
        with pytest.raises(FloatingPointError, match="worker"):
            _parallel.map_row_ranges(work, 80, 2, torch.device("cpu"))
        assert finished == [40] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_an_interrupted_caller_waits_for_its_workers(monkeypatch):
    # Ctrl-C reaches the caller in its wait, never a worker: the caller may not move on while they still write.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    release, started, seen = threading.Event(), threading.Event(), []
    real_wait = _parallel.wait

    def interrupted_wait(futures):
        seen.append(futures)
        if len(seen) == 1:
            started.wait(timeout=10)
            raise KeyboardInterrupt
        release.set()
        return real_wait(futures)

    def work(lo, hi):
        if lo > 0:
            started.set()
            release.wait(timeout=10)
        return lo

    monkeypatch.setattr(_parallel, "wait", interrupted_wait)
    try:
        with pytest.raises(KeyboardInterrupt):
            _parallel.map_row_ranges(work, 80, 2, torch.device("cpu"))
        assert all(future.done() for future in seen[0])
        monkeypatch.setattr(_parallel, "wait", real_wait)
        assert _parallel.map_row_ranges(lambda lo, hi: lo, 80, 2, torch.device("cpu")) == [0, 40]
    finally:
        release.set()
        torch.set_num_threads(previous)


def test_sum_in_order_adds_left_to_right():
    parts = [torch.tensor([1e8], dtype=torch.float32), torch.tensor([1.0]), torch.tensor([-1e8])]
    assert float(_parallel.sum_in_order(parts)) == 0.0  # (1e8 + 1) rounds to 1e8 in float32


@pytest.mark.parametrize("tau", [None, 0.5])
def test_dense_solve_on_two_threads_matches_one_thread(monkeypatch, tau):
    from mumatch.ot import _cost, _sinkhorn

    rng = np.random.default_rng(3)
    x = rng.normal(size=(700, 16))
    y = x + rng.normal(size=x.shape)
    # 64 kB blocks cut the 700 rows into 64 blocks (a stored kernel's passes would otherwise be one block).
    monkeypatch.setattr(_cost, "DENSE_BLOCK_BYTES", 64 * 2**10)
    n_ranges = []
    real_map = _sinkhorn.map_row_ranges
    monkeypatch.setattr(
        _sinkhorn,
        "map_row_ranges",
        lambda work, *args: n_ranges.append(len(real_map(lambda *b: b, *args))) or real_map(work, *args),
    )
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(
                mm.ot.sinkhorn(x, y, epsilon=0.01, tau=tau, mode="dense", dtype="float64", device="cpu", tol=1e-6)
            )
    finally:
        torch.set_num_threads(previous)
    one, two = results
    assert {1, 2} <= set(n_ranges)  # both ways were taken
    assert one.converged and two.converged and one.n_iter == two.n_iter
    np.testing.assert_allclose(two.f, one.f, atol=1e-8)
    np.testing.assert_allclose(two.g, one.g, atol=1e-8)
