"""Passes over the rows of a stored kernel, split between the CPU's threads by contiguous row ranges.

A dense Sinkhorn iteration reads each cache-sized block of the kernel twice (``K v`` of the block, then ``Kᵀ u``
with the ``u`` that ``K v`` gave). Torch parallelises each of those two small products by itself, so both threads
touch every block and the block travels between their caches. One worker per thread, each on its own contiguous
rows with one intra-op thread, keeps a block in the cache of the core that reads it: at N = M = 10k on two threads
a fused pass took 19.5 ms instead of 28.5 ms (the two products each alone: 18-19 ms), measured with
``benchmarks/bench_match_ot.py``'s problem.

The workers live in one persistent pool per worker count. Each sets its own torch thread count to 1 once, when it
starts; ``torch.set_num_threads`` also records that count as the default of threads started later, so the default
each worker found is put back from a thread of its own, and the caller's thread count is never touched.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import cache
from typing import TypeVar

import torch

Result = TypeVar("Result")

# A worker gets at least this many blocks (DENSE_BLOCK_BYTES each, 4 MB): below ~64 MB of kernel (4k × 4k float32)
# handing blocks to the workers costs about what the pass saves.
MIN_BLOCKS_PER_WORKER = 8

# Seconds a new pool waits for its workers to start (a broken start raises instead of hanging).
START_TIMEOUT = 60.0

_pools: dict[int, tuple[int, ThreadPoolExecutor]] = {}
_pools_lock = threading.Lock()


@cache
def _openmp_backend() -> bool:
    """Whether torch's intra-op threads are OpenMP's, whose thread count is per thread (not so for the native pool)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def row_ranges(n_rows: int, step: int, n_workers: int) -> list[tuple[int, int]]:
    """``n_workers`` (at most) contiguous ranges covering ``range(n_rows)``, cut at multiples of ``step``."""
    n_blocks = -(-n_rows // step)
    n_workers = max(1, min(n_workers, n_blocks // MIN_BLOCKS_PER_WORKER))
    cuts = [min(n_rows, (n_blocks * k // n_workers) * step) for k in range(n_workers + 1)]
    return [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]


def _single_threaded_worker(defaults: list[int], started: threading.Barrier) -> None:
    defaults.append(torch.get_num_threads())  # a new thread's first call reads the default
    torch.set_num_threads(1)
    started.wait(timeout=START_TIMEOUT)


def _pool(n_workers: int) -> ThreadPoolExecutor:
    """The persistent pool of ``n_workers`` single-threaded workers (a new one after a fork: threads do not follow)."""
    with _pools_lock:
        pid, pool = _pools.get(n_workers, (None, None))
        if pool is not None and pid == os.getpid():
            return pool
        defaults: list[int] = []
        started = threading.Barrier(n_workers + 1)
        pool = ThreadPoolExecutor(
            n_workers,
            thread_name_prefix="mumatch-rows",
            initializer=_single_threaded_worker,
            initargs=(defaults, started),
        )
        # Start every worker now (the pool starts them one task at a time), each blocked until all have started.
        for _ in range(n_workers):
            pool.submit(lambda: None)
        started.wait(timeout=START_TIMEOUT)
        restorer = threading.Thread(target=torch.set_num_threads, args=(defaults[0],))
        restorer.start()
        restorer.join()
        _pools[n_workers] = (os.getpid(), pool)
        return pool


def row_workers(device: torch.device) -> int:
    """How many workers :func:`map_row_ranges` may use on ``device`` (at most; fewer rows can mean fewer)."""
    return torch.get_num_threads() if device.type == "cpu" and _openmp_backend() else 1


def map_row_ranges(work: Callable[[int, int], Result], n_rows: int, step: int, device: torch.device) -> list[Result]:
    """``work(start, stop)`` for each range of :func:`row_ranges`, one worker each on the CPU; results in row order.

    As many workers as the caller's torch threads, each running torch on one thread. Elsewhere than on a
    multi-threaded CPU with OpenMP threads, ``work`` runs once on all rows, in the caller's thread.
    """
    ranges = row_ranges(n_rows, step, row_workers(device))
    if len(ranges) == 1:
        return [work(0, n_rows)]
    futures = [_pool(len(ranges)).submit(work, lo, hi) for lo, hi in ranges]
    try:
        wait(futures)  # all of them, even when one fails: none may go on writing after the caller has moved on
    except BaseException:
        # A KeyboardInterrupt lands in the caller's wait, not in the workers: without this they went on writing
        # into the caller's arrays, and the next call queued behind them. Ranges not started are dropped.
        for future in futures:
            future.cancel()
        wait(futures)
        raise
    return [future.result() for future in futures]


def sum_in_order(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the workers' partial results, always added in row order (the same result for the same threads)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
