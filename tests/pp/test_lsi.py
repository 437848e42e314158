from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from threadpoolctl import threadpool_info, threadpool_limits

from mumatch.pp import _lsi
from mumatch.pp._lsi import matmul, randomized_svd, rmatmul, standardize_rows
from mumatch.pp._normalize import SCALE_FACTOR, clr, inverse_document_frequency, tfidf_log1p

counts_matrices = st.tuples(st.integers(1, 12), st.integers(1, 15)).flatmap(
    lambda shape: arrays(np.int64, shape, elements=st.integers(0, 6))
)


@given(counts_matrices)
@settings(max_examples=60, deadline=None)
def test_tfidf_log1p_matches_dense_reference(dense_counts):
    counts = sp.csr_matrix(dense_counts.astype(np.float32))
    idf = inverse_document_frequency(counts)
    totals = dense_counts.sum(axis=0)
    expected_idf = np.where(totals > 0, dense_counts.shape[0] / np.maximum(totals, 1), 0)
    np.testing.assert_allclose(idf, expected_idf, rtol=1e-6)
    # Seurat v3 TF-IDF spelled out: tf = counts / cell total, times idf, L1 normalised, log1p(x * 1e4).
    cell_totals = dense_counts.sum(axis=1, keepdims=True)
    tf = dense_counts / np.maximum(cell_totals, 1)
    weighted = tf * expected_idf
    row_sums = weighted.sum(axis=1, keepdims=True)
    normalised = np.divide(weighted, row_sums, out=np.zeros_like(weighted), where=row_sums > 0)
    expected = np.log1p(normalised * SCALE_FACTOR)
    result = tfidf_log1p(counts, idf)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result.toarray(), expected, rtol=1e-5, atol=1e-5)
    if counts.nnz:
        assert np.shares_memory(result.indices, counts.indices)  # the index arrays are shared, not copied


def test_tfidf_of_a_cell_whose_counts_all_fall_on_zero_idf_features_is_zero_not_nan():
    # A query projected on a reference's IDF: cell 1 has counts only on feature 1, which the reference never saw
    # (IDF 0), and cell 2 only an explicitly stored zero; their weighted sums are 0, and 0 / 0 must not make NaN.
    counts = sp.csr_matrix((np.array([2.0, 3.0, 0.0], dtype=np.float32), ([0, 1, 2], [0, 1, 0])), shape=(3, 2))
    assert counts.nnz == 3
    result = tfidf_log1p(counts, np.array([1.5, 0.0], dtype=np.float32)).toarray()
    np.testing.assert_allclose(result, [[np.log1p(SCALE_FACTOR), 0.0], [0.0, 0.0], [0.0, 0.0]], rtol=1e-6)


@given(arrays(np.int64, (8, 5), elements=st.integers(0, 20)))
@settings(max_examples=30, deadline=None)
def test_clr_is_per_cell_log_ratio(dense_counts):
    result = clr(sp.csr_matrix(dense_counts.astype(np.float32)))
    log_mean = np.log1p(dense_counts).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(result, np.log1p(dense_counts / np.exp(log_mean)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_randomized_svd_recovers_a_low_rank_matrix(seed):
    rng = np.random.default_rng(seed)
    left, right = rng.normal(size=(300, 6)), rng.normal(size=(6, 80))
    matrix = sp.csr_matrix((left * np.array([50, 30, 20, 10, 5, 2])) @ right, dtype=np.float32)
    singular_values, components = randomized_svd(matrix, 6, random_state=seed)
    exact = np.linalg.svd(matrix.toarray(), compute_uv=False)[:6]
    np.testing.assert_allclose(singular_values, exact, rtol=1e-4)
    assert components.dtype == np.float32
    np.testing.assert_allclose(components @ components.T, np.eye(6), atol=1e-4)
    # Deterministic signs: the largest loading of each component is positive.
    assert (components[np.arange(6), np.abs(components).argmax(axis=1)] > 0).all()


def _in_a_thread(function) -> None:
    # threadpoolctl lets one live thread at a time set OpenBLAS's count: a thread that has ended holds no control.
    thread = threading.Thread(target=function)
    thread.start()
    thread.join()


def test_overlapping_svds_in_two_threads_leave_blas_threads_as_they_were(monkeypatch):
    if not any(info["user_api"] == "blas" for info in threadpool_info()):
        pytest.skip("no BLAS library that threadpoolctl controls")
    inside = {name: threading.Event() for name in ("first", "second")}
    go = {name: threading.Event() for name in ("first", "second")}
    real_matmul = _lsi.matmul

    def paused_matmul(matrix, dense):
        name = threading.current_thread().name
        if not inside[name].is_set():
            inside[name].set()
            go[name].wait(timeout=10)
        return real_matmul(matrix, dense)

    monkeypatch.setattr(_lsi, "matmul", paused_matmul)
    matrix = sp.random(60, 40, density=0.3, format="csr", random_state=0, dtype=np.float32)
    threads = {name: threading.Thread(target=randomized_svd, args=(matrix, 5), name=name) for name in go}
    limits = []
    _in_a_thread(lambda: limits.append(threadpool_limits(limits=2, user_api="blas")))  # 2 even on one core
    try:
        threads["first"].start()
        assert inside["first"].wait(timeout=10)
        threads["second"].start()
        # Before the fix the second SVD entered here, found the first's limit of 1, and put it back last.
        inside["second"].wait(timeout=1)
        go["first"].set()
        threads["first"].join(timeout=10)
        assert inside["second"].wait(timeout=10)
        go["second"].set()
        threads["second"].join(timeout=10)
        assert {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"} == {2}
    finally:
        for event in go.values():
            event.set()
        for thread in threads.values():
            thread.join(timeout=10)
        _in_a_thread(limits[0].restore_original_limits)


def test_randomized_svd_in_feature_chunks_matches_exact_svd(monkeypatch):
    # Chunks of 7 columns over 80 features: the Gram matrix and the components are assembled from 12 pieces.
    monkeypatch.setattr(_lsi, "_column_chunks", lambda n_columns: [slice(s, s + 7) for s in range(0, n_columns, 7)])
    rng = np.random.default_rng(3)
    left, right = rng.normal(size=(300, 5)), rng.normal(size=(5, 80))
    matrix = sp.csr_matrix((left * np.array([40, 25, 12, 6, 3])) @ right, dtype=np.float32)
    singular_values, components = randomized_svd(matrix, 5)
    _, exact_values, exact_components = np.linalg.svd(matrix.toarray(), full_matrices=False)
    np.testing.assert_allclose(singular_values, exact_values[:5], rtol=1e-4)
    np.testing.assert_allclose(np.abs(components @ exact_components[:5].T), np.eye(5), atol=1e-3)


def test_idf_summed_in_chunks_equals_one_pass(monkeypatch):
    from mumatch.pp import _normalize

    counts = sp.random(50, 30, density=0.3, format="csr", dtype=np.float32, random_state=0)
    counts.data = np.ceil(counts.data * 5)
    expected = inverse_document_frequency(counts)
    monkeypatch.setattr(_normalize, "CHECK_CHUNK", 7)
    np.testing.assert_allclose(inverse_document_frequency(counts), expected, rtol=1e-6)


def test_embedding_permutes_with_the_cells():
    rng = np.random.default_rng(0)
    matrix = sp.random(200, 120, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    order = rng.permutation(200)
    _, components = randomized_svd(matrix, 8)
    _, permuted_components = randomized_svd(matrix[order], 8)
    np.testing.assert_allclose(np.abs(components @ permuted_components.T).diagonal()[:4], 1, atol=1e-3)


def test_threaded_products_match_direct_ones(monkeypatch):
    monkeypatch.setattr(_lsi, "THREADED_NNZ", 0)
    monkeypatch.setattr(_lsi, "_n_threads", lambda: 3)
    monkeypatch.setattr(_lsi, "COLUMN_BLOCK", 3)  # 7 dense columns: blocks of 3, 3 and 1
    rng = np.random.default_rng(0)
    matrix = sp.random(101, 57, density=0.2, format="lil", dtype=np.float32, random_state=rng)
    matrix[10:20] = 0  # empty rows inside a block
    matrix = sp.csr_matrix(matrix)
    dense = rng.normal(size=(57, 7)).astype(np.float32)
    np.testing.assert_allclose(matmul(matrix, dense), matrix.toarray() @ dense, rtol=1e-5, atol=1e-5)
    other = rng.normal(size=(101, 7)).astype(np.float32)
    np.testing.assert_allclose(rmatmul(matrix, other), matrix.toarray().T @ other, rtol=1e-5, atol=1e-5)


@given(arrays(np.float32, (6, 4), elements=st.floats(-100, 100, width=32)))
@example(np.array([[99.04568, 99.0625, 99.0625, 99.0625]] + [[1.0, 2.0, 3.0, 4.0]] * 5, dtype=np.float32)).via(
    "a far-off row of small spread: its float32 centring leaves a residual that 1 / std amplifies to 2.3e-4"
)
@settings(max_examples=50, deadline=None)
def test_standardize_rows(values):
    result = standardize_rows(values.copy())
    assert np.isfinite(result).all()
    spread = values.std(axis=1)
    # Centred in float32, a row keeps a mean residual of up to about an ulp of its largest value, which the scaling
    # by 1 / std amplifies: a row 99.0 ± 0.01 came out with a mean of 2.3e-4 (about 1 run in 400 of 50 examples
    # drew such a row against a flat atol of 1e-4). Constant rows (zeros) and well-spread rows stay within 1e-4.
    float32_residual = 4 * np.finfo(np.float32).eps * np.abs(values).max(axis=1)
    amplified = np.divide(float32_residual, spread, out=np.zeros_like(spread), where=spread > 0)
    assert (np.abs(result.mean(axis=1)) <= 1e-4 + amplified).all(), (result.mean(axis=1), 1e-4 + amplified)
    varying = spread > 1e-3 * (np.abs(values).max(axis=1) + 1)
    np.testing.assert_allclose(result[varying].std(axis=1, ddof=1), 1, rtol=1e-3)
