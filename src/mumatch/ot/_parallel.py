"""Passes over the rows of a stored kernel, split between the CPU's threads by contiguous row ranges.

A dense Sinkhorn iteration reads each cache-sized block of the kernel twice (``K v`` of the block, then ``Kᵀ u``
with the ``u`` that ``K v`` gave). Torch parallelises each of those two small products by itself, so both threads
touch every block and the block travels between their caches. One worker per thread, each on its own contiguous
rows with one intra-op thread, keeps a block in the cache of the core that reads it: at N = M = 10k on two threads
a fused pass took 19.5 ms instead of 28.5 ms (the two products each alone: 18-19 ms), measured with
``benchmarks/bench_match_ot.py``'s problem.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Result = TypeVar("Result")

# A worker gets at least this many blocks: below, starting the threads costs more than the pass saves.
MIN_BLOCKS_PER_WORKER = 4


def row_ranges(n_rows: int, step: int, n_workers: int) -> list[tuple[int, int]]:
    """``n_workers`` (at most) contiguous ranges covering ``range(n_rows)``, cut at multiples of ``step``."""
    n_blocks = -(-n_rows // step)
    n_workers = max(1, min(n_workers, n_blocks // MIN_BLOCKS_PER_WORKER))
    cuts = [min(n_rows, (n_blocks * k // n_workers) * step) for k in range(n_workers + 1)]
    return [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]


def map_row_ranges(work: Callable[[int, int], Result], n_rows: int, step: int, device: torch.device) -> list[Result]:
    """``work(start, stop)`` for each range of :func:`row_ranges`, one thread each on the CPU; results in row order.

    Each worker runs torch with one intra-op thread (a worker is itself one of the threads the caller allowed, and
    torch's thread count is per thread under OpenMP); the caller's setting is restored afterwards. Elsewhere than on
    a multi-threaded CPU, ``work`` runs once on all rows.
    """
    n_threads = torch.get_num_threads()
    ranges = row_ranges(n_rows, step, n_threads if device.type == "cpu" else 1)
    if len(ranges) == 1:
        return [work(0, n_rows)]

    def run(bounds: tuple[int, int]) -> Result:
        torch.set_num_threads(1)
        return work(*bounds)

    try:
        with ThreadPoolExecutor(len(ranges), thread_name_prefix="mumatch-rows") as pool:
            return list(pool.map(run, ranges))
    finally:
        # torch.set_num_threads also records the count for threads started later: put the caller's back.
        torch.set_num_threads(n_threads)


def sum_in_order(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the workers' partial results, always added in row order (the same result for the same threads)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
