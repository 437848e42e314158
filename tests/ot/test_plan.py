from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mumatch as mm
from mumatch.ot import _parallel, _plan

from .test_sinkhorn import clouds, matchclot_cost

FAST = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def solved(n_rows=40, n_cols=30, seed=0, **kwargs):
    x, y = clouds(n_rows, n_cols, 6, seed)
    result = mm.ot.sinkhorn(x, y, device="cpu", **kwargs)
    return x, y, result


@FAST
@given(top_k=st.integers(1, 40), seed=st.integers(0, 1000))
def test_top_k_rows_are_normalised(top_k, seed):
    x, y, result = solved(seed=seed)
    sparse = mm.ot.sparsify_plan(x, y, result.f, result.g, result.epsilon, result.cost, top_k=top_k, device="cpu")
    plan = sparse.plan
    assert sp.isspmatrix_csr(plan) and plan.dtype == np.float32
    assert (np.diff(plan.indptr) == min(top_k, 30)).all()
    np.testing.assert_allclose(plan.sum(1).A1, 1, rtol=1e-5)
    full = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost)
    # The kept entries are each row's largest.
    for row in range(0, 40, 7):
        kept = plan.indices[plan.indptr[row] : plan.indptr[row + 1]]
        threshold = np.sort(full[row])[::-1][min(top_k, 30) - 1]
        assert (full[row, kept] >= threshold * (1 - 1e-4)).all()


def test_default_keeps_the_row_mass():
    x, y, result = solved(60, 80, seed=1, epsilon=0.05)
    sparse = mm.ot.sparsify_plan(x, y, result.f, result.g, result.epsilon, result.cost, device="cpu")
    assert (sparse.row_mass_kept >= 0.999 - 1e-6).all()
    full = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost)
    counts = np.diff(sparse.plan.indptr)
    # The smallest such set: one entry fewer would hold less than 99.9 %.
    for row in range(60):
        ordered = np.sort(full[row])[::-1] / full[row].sum()
        assert ordered[: counts[row] - 1].sum() < 0.999 + 1e-6
    capped = mm.ot.sparsify_plan(x, y, result.f, result.g, result.epsilon, result.cost, max_per_row=3, device="cpu")
    assert np.diff(capped.plan.indptr).max() <= 3


def smallest_heavy_set(row: np.ndarray, mass: float, cap: int) -> tuple[np.ndarray, bool]:
    """The fewest largest entries holding ``mass`` of the row (at most ``cap``), and False when too close to call."""
    order = np.argsort(-row, kind="stable")
    cumulative = np.cumsum(row[order]) / row.sum()
    count = min(int((cumulative < mass).sum()) + 1, cap, row.size)
    clear = abs(cumulative[count - 1] - mass) > 1e-5 and (count < 2 or abs(cumulative[count - 2] - mass) > 1e-5)
    return np.sort(order[:count]), clear


@pytest.mark.parametrize(
    ("epsilon", "max_per_row", "mass"),
    # Concentrated rows (few entries above the margin), some rows capped, every row capped (the diffuse probe).
    [(0.002, 1000, 0.999), (0.002, 2, 0.999), (0.02, 3, 0.999), (0.01, 1000, 0.99)],
)
def test_default_rows_are_their_smallest_heavy_set(epsilon, max_per_row, mass):
    x, y, result = solved(120, 90, seed=4, epsilon=epsilon, dtype="float64", tol=1e-6, max_iter=5000)
    args = (x, y, result.f, result.g, result.epsilon, result.cost)
    sparse = mm.ot.sparsify_plan(*args, mass=mass, max_per_row=max_per_row, dtype="float64", device="cpu")
    full = mm.ot.plan_tile(*args)
    checked = 0
    for row in range(full.shape[0]):
        expected, clear = smallest_heavy_set(full[row], mass, max_per_row)
        if not clear:
            continue
        kept = np.sort(sparse.plan.indices[sparse.plan.indptr[row] : sparse.plan.indptr[row + 1]])
        np.testing.assert_array_equal(kept, expected)
        checked += 1
    assert checked > 100
    assert (sparse.plan.data > 0).all()  # padding is never stored
    np.testing.assert_allclose(sparse.plan.sum(1).A1, 1, rtol=1e-6)


def test_mass_beyond_float32_keeps_no_padding():
    # 1 - 1e-9 rounds to 1 in float32: the kept prefix never reaches it, so keep stops at the candidates (all of
    # the row's mass that float32 can see), never at the zero-weight padding behind them.
    x, y, result = solved(120, 90, seed=5, epsilon=0.002)
    sparse = mm.ot.sparsify_plan(x, y, result.f, result.g, result.epsilon, result.cost, mass=1 - 1e-9, device="cpu")
    assert (sparse.plan.data > 0).all()
    np.testing.assert_allclose(sparse.plan.sum(1).A1, 1, rtol=1e-5)
    np.testing.assert_allclose(sparse.row_mass_kept, 1, rtol=1e-5)


def test_non_finite_potentials_are_refused():
    x, y, result = solved()
    for f, g in ((np.where(np.arange(40) == 3, np.nan, result.f), result.g), (result.f, result.g - np.inf)):
        for build in (mm.ot.sparsify_plan, mm.ot.plan_tile):
            with pytest.raises(ValueError, match="NaN or infinite"):
                build(x, y, f, g, result.epsilon, result.cost)


def test_concentrated_and_capped_rows_in_one_strip():
    """Rows with few heavy entries and rows over the cap, in one strip, agree with the exact top entries."""
    values = torch.full((4, 50), -40.0, dtype=torch.float64)
    values[0, [3, 7]] = torch.tensor([0.0, -1.0], dtype=torch.float64)  # short row: two entries above the threshold
    values[1] = -torch.arange(50.0, dtype=torch.float64) / 10  # every entry above it: capped at k
    values[2, 9] = 0.0
    values[3] = -torch.arange(50.0, dtype=torch.float64).flip(0) / 10
    top_values, top_index, available = _plan._top_above(values, values.amax(dim=1) - 10.0, 5)
    np.testing.assert_array_equal(available.numpy(), [2, 5, 1, 5])
    assert top_index[0, :2].tolist() == [3, 7] and top_index[2, 0].item() == 9
    assert top_index[1].tolist() == [0, 1, 2, 3, 4] and top_index[3].tolist() == [49, 48, 47, 46, 45]
    assert torch.isinf(top_values[0, 2:]).all() and torch.isinf(top_values[2, 1:]).all()


@pytest.mark.parametrize(
    ("n", "m", "seed", "budget_rows"),
    # One block of rows and columns; then several strips and more columns than one block (BLOCK_COLS).
    [(50, 50, 2, 10), (30, 2500, 5, 7)],
)
def test_sparse_plan_summaries_match_the_full_plan(n, m, seed, budget_rows):
    x, y, result = solved(n, m, seed=seed, dtype="float64", tol=1e-8, max_iter=5000)
    budget = budget_rows * m * 8
    sparse = mm.ot.sparsify_plan(
        x, y, result.f, result.g, result.epsilon, result.cost, dtype="float64", device="cpu", memory_budget=budget
    )
    full = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost)
    rows = full / full.sum(1, keepdims=True)
    cols = full / full.sum(0, keepdims=True)
    np.testing.assert_allclose(sparse.row_confidence, rows.max(1), rtol=1e-6)
    np.testing.assert_allclose(sparse.col_confidence, cols.max(0), rtol=1e-6)
    entropy = lambda p, axis: -(p * np.log(np.where(p > 0, p, 1))).sum(axis)
    np.testing.assert_allclose(sparse.row_entropy, entropy(rows, 1), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(sparse.col_entropy, entropy(cols, 0), rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(sparse.plan.argmax(1).A1, rows.argmax(1))
    assert (sparse.row_mass_kept >= 0.999 - 1e-9).all()


@pytest.mark.skipif(not _parallel._openmp_backend(), reason="row workers need torch's OpenMP threads")
@pytest.mark.parametrize(
    ("n_rows", "n_cols", "dtype", "top_k", "strip_rows"),
    # 40 strips of 5 rows, by mass; 48 strips of 2 rows, each in two column blocks (BLOCK_COLS), top k in float32.
    [(200, 30, "float64", None, 5), (96, 2100, "float32", 5, 2)],
)
def test_workers_build_the_sparse_plan_of_one_thread(monkeypatch, n_rows, n_cols, dtype, top_k, strip_rows):
    # On two threads two workers build half the rows each, and the columns' statistics are added up.
    x, y, result = solved(n_rows, n_cols, seed=4, dtype=dtype, tol=1e-6, max_iter=5000)
    args = (x, y, result.f, result.g, result.epsilon, result.cost)
    itemsize = 8 if dtype == "float64" else 4
    real_map = _plan.map_row_ranges
    n_parts = []
    monkeypatch.setattr(_plan, "map_row_ranges", lambda *a: n_parts.append(len(parts := real_map(*a))) or parts)
    previous = torch.get_num_threads()
    built = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            # The budget is shared between the workers: each gets strips of strip_rows rows.
            budget = threads * strip_rows * n_cols * itemsize
            built[threads] = mm.ot.sparsify_plan(*args, top_k=top_k, dtype=dtype, device="cpu", memory_budget=budget)
    finally:
        torch.set_num_threads(previous)
    assert n_parts == [1, 2]
    one, two = built[1], built[2]
    # The same entries; values up to the rounding of products run on one thread or on several.
    np.testing.assert_array_equal(one.plan.indptr, two.plan.indptr)
    np.testing.assert_array_equal(one.plan.indices, two.plan.indices)
    np.testing.assert_allclose(one.plan.data, two.plan.data, rtol=1e-5)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for name in ("row_confidence", "row_entropy", "row_mass_kept", "col_confidence", "col_entropy"):
        np.testing.assert_allclose(getattr(one, name), getattr(two, name), rtol=rtol, atol=1e-7)
    full = mm.ot.plan_tile(*args)
    np.testing.assert_allclose(two.col_confidence, (full / full.sum(0, keepdims=True)).max(0), rtol=1e-4)


def test_certainty_stays_in_range_in_float32():
    # Concentrated rows in float32: the largest weight is the whole row up to rounding (1.0000002 before clipping,
    # and an entropy of -1e-6).
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 10)), rng.normal(size=(180, 10))
    result = mm.ot.sinkhorn(x, y, epsilon=1e-3, tau=0.05, device="cpu")
    sparse = mm.ot.sparsify_plan(x, y, result.f, result.g, result.epsilon, result.cost, device="cpu")
    for confidence, entropy in (
        (sparse.row_confidence, sparse.row_entropy),
        (sparse.col_confidence, sparse.col_entropy),
    ):
        assert confidence.max() == 1.0 and entropy.min() == 0.0  # reached (concentrated rows), never passed


def test_tiles_do_not_change_the_sparse_plan():
    x, y, result = solved(70, 40, seed=3)
    args = (x, y, result.f, result.g, result.epsilon, result.cost)
    one = mm.ot.sparsify_plan(*args, device="cpu")
    many = mm.ot.sparsify_plan(*args, device="cpu", memory_budget=3 * 40 * 4 * 3)
    np.testing.assert_allclose(one.plan.toarray(), many.plan.toarray(), atol=1e-5)  # float32 GEMM rounding
    np.testing.assert_allclose(one.col_entropy, many.col_entropy, rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"mass": 0.0}, "mass"),
        ({"max_per_row": 0}, "max_per_row"),
        ({"memory_budget": 0}, "memory_budget"),
    ],
)
def test_bad_sparsify_arguments(kwargs, message):
    x, y, result = solved()
    with pytest.raises(ValueError, match=message):
        mm.ot.sparsify_plan(x, y, result.f, result.g, result.epsilon, result.cost, **kwargs)


def test_potentials_of_other_points_are_refused():
    x, y, result = solved()
    for f, g in ((result.f[:1], result.g), (result.f, result.g[:-1]), (result.f[:, None], result.g)):
        with pytest.raises(ValueError, match="one potential per point"):
            mm.ot.sparsify_plan(x, y, f, g, result.epsilon, result.cost)
        with pytest.raises(ValueError, match="one potential per point"):
            mm.ot.plan_tile(x, y, f, g, result.epsilon, result.cost)


def test_exact_matching_is_the_assignment():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8))
    perm = rng.permutation(30)
    y = x[perm] + 0.01 * rng.normal(size=x.shape)
    sparse = mm.ot.exact_matching(x, y)
    assert sparse.plan.nnz == 30
    np.testing.assert_array_equal(perm[sparse.plan.argmax(1).A1], np.arange(30))
    np.testing.assert_array_equal(sparse.row_confidence, 1.0)
    np.testing.assert_array_equal(sparse.row_entropy, 0.0)


def test_exact_matching_unequal_sizes_and_limit():
    x, y = clouds(12, 8, 4, 0)
    sparse = mm.ot.exact_matching(x, y)
    assert sparse.plan.nnz == 8
    assert np.isnan(sparse.row_confidence).sum() == 4
    with pytest.raises(ValueError, match="max_size"):
        mm.ot.exact_matching(x, y, max_size=10)
    with pytest.raises(ValueError, match="max_size=11"):  # the larger side counts
        mm.ot.exact_matching(y, x, max_size=11)
    assert mm.ot.exact_matching(x, y, max_size=12).plan.nnz == 8  # as many points as max_size: allowed


def test_mutual_knn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    sparse = mm.ot.mutual_knn(x, x + 0.01 * rng.normal(size=x.shape), n_neighbors=3)
    np.testing.assert_array_equal(sparse.plan.argmax(1).A1, np.arange(40))
    x, y = clouds(50, 35, 4, 1)
    sparse = mm.ot.mutual_knn(x, y, n_neighbors=5)
    assert (np.diff(sparse.plan.indptr) >= 1).all()  # every row is matched
    np.testing.assert_allclose(sparse.plan.sum(1).A1, 1, rtol=1e-6)
    with pytest.raises(ValueError, match="n_neighbors"):
        mm.ot.mutual_knn(x, y, n_neighbors=0)
    with pytest.raises(ValueError, match="memory_budget"):
        mm.ot.mutual_knn(x, y, memory_budget=-1)


def test_plan_tile_rows():
    x, y, result = solved()
    full = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost)
    part = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost, rows=slice(5, 9))
    np.testing.assert_allclose(part, full[5:9])


def test_rows_far_from_their_mass_are_handled_exactly():
    # Adding a constant to f scales a row of P by exp(constant / epsilon) (here e^300, beyond float32) without
    # changing the row once normalised: the strip's shifted sums leave their range and the exact row max is used.
    x, y, result = solved(50, 40, seed=4)
    args = (x, y, result.f, result.g, result.epsilon, result.cost)
    plain = mm.ot.sparsify_plan(*args, device="cpu")
    shifted_f = result.f.copy()
    shifted_f[::3] += 3.0
    shifted = mm.ot.sparsify_plan(x, y, shifted_f, result.g, result.epsilon, result.cost, device="cpu")
    np.testing.assert_allclose(shifted.plan.toarray(), plain.plan.toarray(), atol=1e-5)
    np.testing.assert_allclose(shifted.row_confidence, plain.row_confidence, rtol=1e-4)
    np.testing.assert_allclose(shifted.row_entropy, plain.row_entropy, rtol=1e-4, atol=1e-6)


def test_a_stored_squared_euclidean_cost_is_rebuilt_for_a_subset_of_the_points():
    # The points are moved to a common centre and scale before the cost (float32 lost far-off clouds to rounding);
    # that frame is stored with the cost, so a subset of the rows gets the very same entries.
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 4)) + 1000.0, rng.normal(size=(30, 4)) + 1000.0
    result = mm.ot.sinkhorn(x, y, cost="sqeuclidean", epsilon=0.05, dtype="float64", device="cpu")
    full = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost)
    subset = mm.ot.plan_tile(x[:10], y, result.f[:10], result.g, result.epsilon, result.cost)
    np.testing.assert_allclose(subset, full[:10], rtol=1e-12)
    assert np.abs(full.sum(1) - 1 / 40).sum() < 2e-3  # and the plan is the converged one


def test_a_stored_cost_without_a_frame_is_rebuilt_on_the_points_as_given():
    # Costs stored before the frame was recorded hold only offset and scale, for the points as they were given.
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(20, 3))
    result = mm.ot.sinkhorn(x, y, cost="sqeuclidean", epsilon=0.05, dtype="float64", device="cpu")
    full = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost)
    distances = ((x[:, None] - y[None]) ** 2).sum(-1)
    old = {"kind": "sqeuclidean", "offset": 0.0, "scale": 2.0 / distances.max()}  # what an older version stored
    np.testing.assert_allclose(mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, old), full, rtol=1e-9)
    with pytest.raises(ValueError, match="centre has 3 dimensions"):
        mm.ot.plan_tile(x[:, :2], y[:, :2], result.f, result.g, result.epsilon, result.cost)


def test_squared_euclidean_plan_of_points_near_the_float64_limit():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(25, 3)), rng.normal(size=(20, 3))
    plain = mm.ot.sinkhorn(x, y, cost="sqeuclidean", epsilon=0.05, dtype="float64", device="cpu")
    huge = mm.ot.sinkhorn(x * 5e307, y * 5e307, cost="sqeuclidean", epsilon=0.05, dtype="float64", device="cpu")
    np.testing.assert_allclose(
        mm.ot.plan_tile(x * 5e307, y * 5e307, huge.f, huge.g, 0.05, huge.cost),
        mm.ot.plan_tile(x, y, plain.f, plain.g, 0.05, plain.cost),
        atol=1e-9,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mutual_knn_weights_in_the_precision_asked_for(dtype):
    # With every column a neighbour of every row (and so every link mutual), a row's weights are the softmax of
    # -C / epsilon: a float32 cost is off by ~1e-7, its weights by ~1e-5 at epsilon 0.01.
    x, y = clouds(30, 20, 5, 2)
    sparse = mm.ot.mutual_knn(x, y, n_neighbors=30, epsilon=0.01, dtype=dtype, device="cpu")
    logits = -matchclot_cost(x, y) / 0.01
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    rtol = 1e-6 if dtype == "float64" else 1e-4  # the plan itself is stored in float32
    np.testing.assert_allclose(sparse.plan.toarray(), expected, rtol=rtol, atol=1e-30)


def brute_force_mutual_knn(cost: np.ndarray, k: int, epsilon: float) -> np.ndarray:
    """Mutual k nearest neighbours from their description, on a cost without ties: links (i, j) where each is among
    the other's k nearest; a row without one keeps its nearest column; a row's weights are softmax(-cost / epsilon)
    over its links."""
    n_rows, n_cols = cost.shape
    near_of_row = np.argsort(cost, axis=1)[:, : min(k, n_cols)]
    near_of_col = np.argsort(cost, axis=0)[: min(k, n_rows)].T
    links = np.zeros(cost.shape, dtype=bool)
    for i in range(n_rows):
        for j in near_of_row[i]:
            links[i, j] = i in near_of_col[j]
        if not links[i].any():
            links[i, near_of_row[i, 0]] = True
    weights = np.where(links, np.exp(-(cost - cost.min(axis=1, keepdims=True)) / epsilon), 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("n_rows", "n_cols", "k", "seed"), [(25, 18, 3, 0), (18, 25, 4, 1), (12, 12, 2, 2), (6, 9, 20, 3)]
)
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_mutual_knn_against_a_brute_force_reference(n_rows, n_cols, k, seed, cost):
    x, y = clouds(n_rows, n_cols, 4, seed)
    if cost == "cosine":
        reference_cost = matchclot_cost(x, y)
    else:
        reference_cost = ((x[:, None] - y[None]) ** 2).sum(-1)
        reference_cost /= reference_cost.max()
    expected = brute_force_mutual_knn(reference_cost, k, epsilon=0.05)
    if k < min(n_rows, n_cols):
        assert (expected > 0).sum() < n_rows * k  # some of a row's k nearest are not mutual
    sparse = mm.ot.mutual_knn(x, y, n_neighbors=k, epsilon=0.05, cost=cost, dtype="float64", device="cpu")
    np.testing.assert_array_equal(sparse.plan.toarray() > 0, expected > 0)
    np.testing.assert_allclose(sparse.plan.toarray(), expected, rtol=1e-5, atol=1e-12)


def test_mutual_knn_certainty_is_that_of_the_returned_plan():
    # Each row's link weights are relative to its own nearest column; the columns' certainty must be read from the
    # row-normalised plan that is returned, as the rows' is.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 4)), rng.normal(size=(150, 4))
    sparse = mm.ot.mutual_knn(x, y, n_neighbors=5, epsilon=0.05)
    plan = sparse.plan.toarray().astype(np.float64)
    np.testing.assert_allclose(plan.sum(axis=1), 1, rtol=1e-5)
    for weights, confidence, entropy in [
        (plan, sparse.row_confidence, sparse.row_entropy),
        (plan.T, sparse.col_confidence, sparse.col_entropy),
    ]:
        sums = weights.sum(axis=1)
        filled = sums > 0
        p = weights[filled] / sums[filled, None]
        np.testing.assert_allclose(confidence[filled], p.max(axis=1), rtol=1e-5)
        with np.errstate(divide="ignore", invalid="ignore"):
            expected_entropy = -np.where(p > 0, p * np.log(p), 0).sum(axis=1)
        np.testing.assert_allclose(entropy[filled], expected_entropy, rtol=1e-4, atol=1e-6)
        assert np.isnan(confidence[~filled]).all()


def test_mutual_knn_matches_a_row_whose_nearest_column_is_not_mutual():
    # Row 0's nearest column (0) prefers rows 1 and 2; its mutual link (column 1) is 36 cost units behind, far below
    # exp(-Δ / ε) = 0 at ε = 1e-4 when weighed against the nearest column: the row was left empty.
    x, y = np.array([[4.0], [0.0], [0.1]]), np.array([[0.0], [10.0]])
    sparse = mm.ot.mutual_knn(x, y, n_neighbors=2, epsilon=1e-4, cost="sqeuclidean", device="cpu")
    np.testing.assert_array_equal(sparse.plan.toarray(), [[0, 1], [1, 0], [1, 0]])
    np.testing.assert_array_equal(sparse.row_confidence, [1, 1, 1])


@pytest.mark.parametrize("rows", [slice(0, 10, 2), slice(None, None, -1), slice(3, 8), slice(5, 5)])
def test_plan_tile_returns_the_rows_a_slice_selects(rows):
    x, y, result = solved()
    full = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost)
    tile = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost, rows=rows)
    np.testing.assert_allclose(tile, full[rows], rtol=1e-12)
    assert tile.shape == full[rows].shape


def test_plan_tile_and_sparsify_plan_check_epsilon_and_rows():
    x, y, result = solved()
    for bad in (0.0, -0.01, np.nan, "0.01"):
        with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
            mm.ot.plan_tile(x, y, result.f, result.g, bad, result.cost)
        with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
            mm.ot.sparsify_plan(x, y, result.f, result.g, bad, result.cost, device="cpu")
    with pytest.raises(ValueError, match="rows must be a slice"):
        mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost, rows=[0, 1])
    f = torch.tensor(result.f, requires_grad=True)  # potentials that require grad are read, not refused
    assert mm.ot.plan_tile(x, y, f, result.g, result.epsilon, result.cost).shape == (40, 30)


def test_sparse_plan_stats_sums_duplicates_and_refuses_negative_or_non_finite_weights():
    duplicated = sp.csr_matrix((np.array([0.5, 0.5, 1.0]), np.array([0, 0, 1]), np.array([0, 2, 3])), shape=(2, 2))
    stats = mm.ot.sparse_plan_stats(duplicated)
    np.testing.assert_array_equal(stats.row_confidence, [1, 1])
    np.testing.assert_array_equal(stats.row_entropy, [0, 0])
    np.testing.assert_array_equal(duplicated.data, [0.5, 0.5, 1.0])  # the caller's matrix is left as it was
    with pytest.raises(ValueError, match="negative weights"):
        mm.ot.sparse_plan_stats(sp.csr_matrix([[2.0, -1.0], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        mm.ot.sparse_plan_stats(sp.csr_matrix([[np.nan, 1.0], [0.5, 0.5]]))


def test_sparse_plan_stats_against_a_dense_computation():
    # Rows of different sums, an empty row (2) and an empty column (3): each non-empty row is normalised by its own sum,
    # and confidence and entropy are those of the normalised rows and columns.
    dense = np.array([[1.0, 3.0, 0.0, 0.0], [0.2, 0.0, 0.6, 0.0], [0.0, 0.0, 0.0, 0.0]])
    stats = mm.ot.sparse_plan_stats(sp.csr_matrix(dense))

    def normalised(matrix):
        sums = matrix.sum(axis=1, keepdims=True)
        return np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)

    def entropy(p):
        return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)

    rows, cols = normalised(dense), normalised(dense.T)
    np.testing.assert_allclose(stats.plan.toarray(), rows, rtol=1e-6)
    np.testing.assert_allclose(stats.row_confidence, [0.75, 0.75, np.nan])
    np.testing.assert_allclose(stats.row_entropy, np.append(entropy(rows)[:2], np.nan))
    np.testing.assert_allclose(stats.col_confidence, np.append(cols.max(axis=1)[:3], np.nan))
    np.testing.assert_allclose(stats.col_entropy, np.append(entropy(cols)[:3], np.nan))
    np.testing.assert_array_equal(stats.row_mass_kept, [1.0, 1.0, np.nan])
