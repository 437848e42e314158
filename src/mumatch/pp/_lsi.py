"""Truncated SVD of a large sparse matrix and the projections built on it (no AnnData in sight)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

# Randomized SVD (Halko, Martinsson & Tropp 2011). Oversampling as scikit-learn's randomized_svd; two power
# iterations instead of TruncatedSVD's five: each iteration costs two passes over the sparse matrix (the whole cost at
# atlas scale), and the leading components, the ones a downstream encoder relies on, have converged by then
# (benchmarks/bench_lsi_harmony.py reports the agreement with five iterations).
N_OVERSAMPLES = 10
N_POWER_ITERATIONS = 2
THREADED_NNZ = 1 << 20  # below this many non-zeros a sparse product is faster than starting threads
COLUMN_BLOCK = 16  # dense columns per sparse product (see _product)
# BLAS thread counts belong to the process, not to a thread: two SVDs in overlapping threads each restored the count
# it found on entering, the second found the first's limit of 1, and BLAS stayed on one thread for good. One SVD at a
# time holds the limit (each of them already keeps every core busy with its own threads).
_BLAS_LIMIT_LOCK = threading.Lock()


def _n_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def _product(multiply, dense: np.ndarray, n_rows: int) -> np.ndarray:
    """``multiply(dense)`` (a sparse matrix's product) computed COLUMN_BLOCK columns of ``dense`` at a time.

    A sparse × dense product gathers one row of the dense factor per non-zero; a block of 16 columns of a
    100,000-row factor (6 MB) stays in cache where the whole factor (100 MB at ~260 columns) does not: 1.4-1.5×
    faster per pass on a 10k-cell ATAC matrix (measured; 32 columns 1.3×, 64 slower than no blocking). The column
    blocks are shared out among threads (scipy's sparse kernels release the GIL), each writing its own columns of
    the result: no per-thread partial sums (splitting the rows instead needs one features × components array per
    thread for ``matrix.T @ dense``).
    """
    out = np.empty((n_rows, dense.shape[1]), dtype=np.result_type(np.float32, dense.dtype))

    def multiply_block(first: int) -> None:
        columns = slice(first, first + COLUMN_BLOCK)
        out[:, columns] = multiply(np.ascontiguousarray(dense[:, columns]))

    firsts = range(0, dense.shape[1], COLUMN_BLOCK)
    n_threads = min(_n_threads(), len(firsts))
    if n_threads == 1:
        for first in firsts:
            multiply_block(first)
    else:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            list(pool.map(multiply_block, firsts))
    return out


def matmul(matrix: sp.csr_matrix, dense: np.ndarray) -> np.ndarray:
    """``matrix @ dense``, by column blocks of ``dense`` shared out among threads."""
    if matrix.nnz < THREADED_NNZ:
        return matrix @ dense
    return _product(matrix.__matmul__, dense, matrix.shape[0])


def rmatmul(matrix: sp.csr_matrix, dense: np.ndarray) -> np.ndarray:
    """``matrix.T @ dense`` without materialising the transpose, by column blocks of ``dense`` shared among threads."""
    if matrix.nnz < THREADED_NNZ:
        return matrix.T @ dense
    return _product(matrix.T.__matmul__, dense, matrix.shape[1])


def _orthonormal(matrix: np.ndarray) -> np.ndarray:
    return scipy.linalg.qr(matrix, mode="economic", overwrite_a=True, check_finite=False)[0]


def _well_conditioned(matrix: np.ndarray) -> np.ndarray:
    """The columns rescaled by a pivoted LU: enough to keep power iterations stable, cheaper than a QR.

    scikit-learn's randomized_svd normalises its power iterations the same way; only the final basis is made
    orthonormal.
    """
    return scipy.linalg.lu(matrix, permute_l=True, overwrite_a=True, check_finite=False)[0]


def _svd_of_wide(small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values and right singular vectors of a short, wide matrix from its float64 Gram matrix.

    ``small @ small.T`` is ``size × size``: its eigendecomposition replaces an SVD of the ``size × n_features`` block,
    which took seconds per call for 100,000 features. The Gram matrix is accumulated and the components are formed
    over column chunks, so no float64 copy of ``small`` is made (it was a third of the peak memory at 100k peaks).
    """
    gram = np.zeros((small.shape[0], small.shape[0]), dtype=np.float64)
    for chunk in _column_chunks(small.shape[1]):
        block = small[:, chunk].astype(np.float64)
        gram += block @ block.T
    eigenvalues, eigenvectors = scipy.linalg.eigh(gram, check_finite=False)
    order = np.argsort(eigenvalues)[::-1]
    singular_values = np.sqrt(np.clip(eigenvalues[order], 0, None))
    scale = np.divide(1.0, singular_values, out=np.zeros_like(singular_values), where=singular_values > 0)
    rotation = (eigenvectors[:, order] * scale).T
    components = np.empty_like(small)
    for chunk in _column_chunks(small.shape[1]):
        components[:, chunk] = rotation @ small[:, chunk].astype(np.float64)
    return singular_values, components


def _column_chunks(n_columns: int, size: int = 8192) -> list[slice]:
    return [slice(start, start + size) for start in range(0, n_columns, size)]


def randomized_svd(
    matrix: sp.csr_matrix,
    n_comps: int,
    *,
    n_iter: int = N_POWER_ITERATIONS,
    n_oversamples: int = N_OVERSAMPLES,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Leading singular values and right singular vectors of a sparse matrix, in the matrix's float precision.

    Parameters
    ----------
    matrix
        Cells × features, CSR (float32 keeps every dense block in float32).
    n_comps
        Number of components, at most ``min(matrix.shape)``.
    n_iter
        Power iterations (each is two passes over ``matrix``).
    n_oversamples
        Extra random directions beyond ``n_comps``.
    random_state
        Seed of the random test matrix.

    Returns
    -------
    ``(singular_values, components)``: ``(n_comps,)`` in decreasing order and ``(n_comps, n_features)``, with the
    sign of each component fixed so that its largest loading is positive (deterministic output).
    """
    size = min(n_comps + n_oversamples, min(matrix.shape))
    rng = np.random.default_rng(random_state)
    test_matrix = rng.standard_normal((matrix.shape[1], size), dtype=np.float32).astype(matrix.dtype, copy=False)
    # The sparse products run in our own threads (one per column block); BLAS stays single-threaded meanwhile. A
    # multi-threaded OpenBLAS QR of a (cells × ~260) block was measured 15× slower (100× on small blocks) than a
    # single thread on a loaded 2-core machine, where its threads wait on each other.
    with _BLAS_LIMIT_LOCK, threadpool_limits(limits=1, user_api="blas"):
        basis = matmul(matrix, test_matrix)
        del test_matrix  # features × size: as large as every other dense block at 100k peaks
        for _ in range(n_iter):
            basis = matmul(matrix, _well_conditioned(rmatmul(matrix, _well_conditioned(basis))))
        basis = _orthonormal(basis)
        small = rmatmul(matrix, basis).T  # basis.T @ matrix: size × features
        singular_values, components = _svd_of_wide(small)
    singular_values, components = singular_values[:n_comps], components[:n_comps]
    largest = np.abs(components).argmax(axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), largest])
    components *= np.where(signs == 0, 1, signs).astype(components.dtype)[:, None]
    return singular_values, components


def standardize_rows(embedding: np.ndarray) -> np.ndarray:
    """Centre and scale each row to unit standard deviation (ddof=1), in place; constant rows become zeros."""
    embedding -= embedding.mean(axis=1, keepdims=True)
    scale = embedding.std(axis=1, ddof=1, keepdims=True) if embedding.shape[1] > 1 else np.ones_like(embedding[:, :1])
    scale[~(scale > 0)] = 1
    embedding /= scale
    return embedding
