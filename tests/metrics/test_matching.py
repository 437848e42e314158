from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import mumatch as mm
from mumatch._layout import embed_block, extract_block, split_index
from mumatch.metrics import foscttm, match_score, top_k_accuracy


def brute_match_score(prediction, truth):
    total = 0.0
    for i, j in enumerate(truth):
        row = np.maximum(prediction[i], 0)
        total += row[j] / row.sum() if row.sum() > 0 else 0.0
    return total / len(truth)


def brute_top_k(prediction, truth, k):
    """Expected top-k hit under random tie-breaking, by enumerating every tie order."""
    hits = []
    for i, j in enumerate(truth):
        greater = sum(prediction[i, c] > prediction[i, j] for c in range(prediction.shape[1]))
        ties = sum(prediction[i, c] == prediction[i, j] for c in range(prediction.shape[1]) if c != j)
        # the true entry is equally likely at each of the ties + 1 positions after the larger entries
        hits.append(np.mean([greater + position < k for position in range(ties + 1)]))
    return float(np.mean(hits))


def brute_foscttm(x, y):
    n = len(x)
    d = np.array([[np.sum((x[i] - y[j]) ** 2) for j in range(n)] for i in range(n)])
    forward = [np.sum(d[i] < d[i, i]) / (n - 1) for i in range(n)]
    backward = [np.sum(d[:, j] < d[j, j]) / (n - 1) for j in range(n)]
    return (np.mean(forward) + np.mean(backward)) / 2


def test_hand_computed_examples():
    prediction = np.array([[0.5, 0.5, 0.0], [0.0, 2.0, 2.0], [-1.0, 0.0, 3.0]])
    truth = np.array([0, 2, 2])
    # rows: 0.5/1 = .5 ; 2/4 = .5 ; negatives clipped: 3/3 = 1
    assert match_score(prediction, truth) == pytest.approx(2 / 3)
    # top-1 with random ties: row 0 tied with one other (.5), row 1 tied (.5), row 2 hit (1)
    assert top_k_accuracy(prediction, truth, k=1, direction="forward") == pytest.approx(2 / 3)
    assert top_k_accuracy(prediction, truth, k=2, direction="forward") == pytest.approx(1.0)
    assert match_score(np.zeros((2, 2)), np.array([0, 1])) == 0.0


def test_uniform_prediction_is_random():
    n = 50
    uniform = np.full((n, n), 1 / n)
    truth = np.random.default_rng(0).permutation(n)
    assert match_score(uniform, truth) == pytest.approx(1 / n)
    assert top_k_accuracy(uniform, truth, k=5) == pytest.approx(5 / n)
    assert mm.metrics._matching._foscttm_scores(uniform, truth) == pytest.approx(0.5)


matrices = arrays(
    np.float64, st.tuples(st.integers(2, 7), st.integers(2, 7)), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])
)


@settings(max_examples=60, deadline=None)
@given(prediction=matrices, seed=st.integers(0, 1000), k=st.integers(1, 4))
def test_against_brute_force_dense_and_sparse(prediction, seed, k):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, prediction.shape[1], prediction.shape[0])
    expected = brute_match_score(prediction, truth)
    assert match_score(prediction, truth) == pytest.approx(expected)
    assert match_score(sp.csr_matrix(prediction), truth) == pytest.approx(expected)
    expected_top = brute_top_k(prediction, truth, k)
    assert top_k_accuracy(prediction, truth, k=k, direction="forward") == pytest.approx(expected_top)
    assert top_k_accuracy(sp.csr_matrix(prediction), truth, k=k, direction="forward") == pytest.approx(expected_top)


square_matrices = arrays(
    np.float64, st.integers(2, 7).map(lambda n: (n, n)), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])
)


@settings(max_examples=60, deadline=None)
@given(prediction=square_matrices, seed=st.integers(0, 1000), k=st.integers(1, 4))
def test_backward_top_k_against_brute_force_with_a_permuted_truth(prediction, seed, k):
    # Column j looks for its true row truth⁻¹(j): with a truth that is not the identity, ranking column j's entries
    # against row j instead (the truth read as its own inverse) gives another answer.
    n = prediction.shape[0]
    truth = np.roll(np.arange(n), 1 + seed % (n - 1))  # a cyclic shift: never the identity
    inverse = np.argsort(truth)
    expected = brute_top_k(prediction.T, inverse, k)
    for matrix in (prediction, sp.csr_matrix(prediction)):
        assert top_k_accuracy(matrix, truth, k=k, direction="backward") == pytest.approx(expected)
        forward = brute_top_k(prediction, truth, k)
        assert top_k_accuracy(matrix, truth, k=k, direction="mean") == pytest.approx((forward + expected) / 2)


def test_backward_top_k_of_a_shifted_pairing():
    # Row i's partner is column i + 1 (mod 3); each column's largest entry is in its true row, each row's is not.
    prediction = np.array([[0.0, 0.9, 0.95], [0.95, 0.0, 0.9], [0.9, 0.95, 0.0]])
    truth = np.array([1, 2, 0])
    assert top_k_accuracy(prediction, truth, direction="forward") == 0.0
    assert top_k_accuracy(prediction, truth, direction="backward") == 0.0
    # Column 1's true row is 0 (0.9), below row 2's 0.95: the inverse pairing, not the pairing, is what backward reads.
    prediction = np.array([[0.0, 0.95, 0.1], [0.1, 0.0, 0.95], [0.95, 0.1, 0.0]])
    assert top_k_accuracy(prediction, truth, direction="forward") == 1.0
    assert top_k_accuracy(prediction, truth, direction="backward") == 1.0


def test_backward_and_truth_as_matrix():
    prediction = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.0, 0.0, 1.0]])
    truth = np.eye(3)
    # forward: rows 0 and 2 hit, row 1 misses (0.8 > 0.2); backward: every column hits (column 1: 0.2 > 0.1)
    assert top_k_accuracy(prediction, truth, direction="forward") == pytest.approx(2 / 3)
    assert top_k_accuracy(prediction, sp.csr_matrix(truth), direction="backward") == pytest.approx(1.0)
    assert top_k_accuracy(prediction, truth, direction="mean") == pytest.approx(5 / 6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12))
def test_foscttm_against_brute_force(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = x + rng.normal(scale=0.8, size=(n, 3))
    assert foscttm(x, y, chunk_size=3) == pytest.approx(brute_foscttm(x, y))


def test_foscttm_perfect_and_shapes():
    x = np.random.default_rng(0).normal(size=(20, 4))
    assert foscttm(x, x) == 0.0
    collapsed = np.ones((20, 4))  # every cell at the same point: no information, half of the others "closer"
    assert foscttm(collapsed, collapsed) == 0.5
    with pytest.raises(ValueError, match="same shape"):
        foscttm(x, x[:5])


def test_mudata_interface(multiome):
    index1, index2 = split_index(multiome, "rna"), split_index(multiome, "atac")
    truth = multiome.obsp["match_true"]
    multiome.obsp["perfect"] = truth.copy()
    assert match_score(multiome, key="perfect") == 1.0
    assert top_k_accuracy(multiome, key="perfect") == 1.0
    assert foscttm(multiome, key="perfect") == 0.0
    # a rectangular sparse plan: half of the columns only
    rng = np.random.default_rng(0)
    block = sp.csr_matrix(rng.random((index1.size, index2.size)))
    multiome.obsp["random"] = embed_block(multiome, "rna", "atac", block, index1, index2)
    assert 0 < match_score(multiome, key="random") < 0.05
    # an embedding in .obsm of both modalities: identical embeddings of the true partners give FOSCTTM 0
    truth_coo = truth.tocoo()
    shared = rng.normal(size=(truth_coo.nnz, 5))
    for mod, positions in (("rna", truth_coo.row), ("atac", truth_coo.col)):
        embedding = np.zeros((multiome[mod].n_obs, 5))
        embedding[multiome[mod].obs_names.get_indexer(multiome.obs_names[positions])] = shared
        multiome.mod[mod].obsm["X_test"] = embedding
    assert foscttm(multiome, key="X_test") == 0.0


def test_mudata_modalities_in_either_order(multiome):
    # The truth is stored with the rna cells along its rows; read for (atac, rna) it is transposed, as a plan is.
    index1, index2 = split_index(multiome, "rna"), split_index(multiome, "atac")
    rng = np.random.default_rng(1)
    block = rng.random((index1.size, index2.size))
    multiome.obsp["random"] = embed_block(multiome, "rna", "atac", sp.csr_matrix(block), index1, index2)
    multiome.uns["random"] = {"params": {"mod1": "rna", "mod2": "atac"}}
    truth = extract_block(multiome, multiome.obsp["match_true"], "rna", "atac", index1, index2).toarray()
    # Scored from the atac cells: each one's weights over the rna cells (a column of the plan, normalised).
    expected = (block * truth).sum(0) / block.sum(0)
    assert match_score(multiome, key="random", mod1="atac", mod2="rna") == pytest.approx(expected.mean())
    # FOSCTTM ranks both ways: the same in either order.
    for mod in ("rna", "atac"):
        multiome.mod[mod].obsm["X_test"] = rng.normal(size=(multiome[mod].n_obs, 5))
    forward = foscttm(multiome, key="X_test", mod1="rna", mod2="atac")
    assert 0.3 < forward < 0.7 and foscttm(multiome, key="X_test", mod1="atac", mod2="rna") == pytest.approx(forward)


def test_mudata_weight_on_cells_without_a_partner_counts(multiome):
    # Each test cell puts 0.01 on its true partner and 0.99 on a training cell (a plan over all cells, as
    # match_ot(cells="all") writes): the score is 0.01 and the partner is never first, in either direction.
    truth = multiome.obsp["match_true"].tocoo()
    train = np.flatnonzero((multiome["atac"].obs["split"] == "train").to_numpy())[0]
    train_position = multiome.obs_names.get_loc(multiome["atac"].obs_names[train])
    n_obs = multiome.n_obs
    rows = np.concatenate([truth.row, truth.row])
    cols = np.concatenate([truth.col, np.full(truth.nnz, train_position)])
    values = np.concatenate([np.full(truth.nnz, 0.01), np.full(truth.nnz, 0.99)])
    multiome.obsp["leaky"] = sp.csr_matrix((values, (rows, cols)), shape=(n_obs, n_obs))
    np.testing.assert_allclose(match_score(multiome, key="leaky"), 0.01)
    assert top_k_accuracy(multiome, key="leaky", direction="forward") == 0.0
    assert top_k_accuracy(multiome, key="leaky", k=2, direction="forward") == 1.0
    # Backward, each partner ranks the rows giving it weight: only its own row does, so it is first.
    assert top_k_accuracy(multiome, key="leaky", direction="backward") == 1.0


def test_mudata_backward_counts_weight_from_rows_without_a_partner(multiome):
    # Each true atac partner gets 0.99 from one training rna cell (no true partner) and 0.01 from its true row: looking
    # back, the training row outranks the true one, so backward top-1 is 0 (and top-2 is 1), as forward is 1.
    truth = multiome.obsp["match_true"].tocoo()
    train = np.flatnonzero((multiome["rna"].obs["split"] == "train").to_numpy())[0]
    train_position = multiome.obs_names.get_loc(multiome["rna"].obs_names[train])
    assert train_position not in set(truth.row)
    rows = np.concatenate([truth.row, np.full(truth.nnz, train_position)])
    cols = np.concatenate([truth.col, truth.col])
    values = np.concatenate([np.full(truth.nnz, 0.01), np.full(truth.nnz, 0.99)])
    n_obs = multiome.n_obs
    multiome.obsp["leaky"] = sp.csr_matrix((values, (rows, cols)), shape=(n_obs, n_obs))
    multiome.uns["leaky"] = {"params": {"mod1": "rna", "mod2": "atac"}}
    assert top_k_accuracy(multiome, key="leaky", direction="forward") == 1.0
    assert top_k_accuracy(multiome, key="leaky", direction="backward") == 0.0
    assert top_k_accuracy(multiome, key="leaky", k=2, direction="backward") == 1.0


def test_bad_inputs(multiome):
    with pytest.raises(ValueError, match="truth"):
        match_score(np.ones((2, 2)))
    with pytest.raises(ValueError, match="one non-zero"):
        match_score(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        match_score(np.array([[np.nan, 1.0], [0.0, 1.0]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        match_score(np.ones((2, 2)), np.array([0, 5]))
    for fractional in (np.array([0.7, 1.2]), np.array([0.0, np.nan])):
        with pytest.raises(ValueError, match="whole column numbers"):
            match_score(np.ones((2, 2)), fractional)
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy(np.ones((2, 2)), np.array([0, 1]), k=0)
    with pytest.raises(ValueError, match="direction"):
        top_k_accuracy(np.ones((2, 2)), np.array([0, 1]), direction="sideways")
    with pytest.raises(ValueError, match="square"):
        top_k_accuracy(np.ones((2, 3)), np.array([0, 1]), direction="backward")
    with pytest.raises(KeyError, match="run mm.tl.match_ot"):
        match_score(multiome, key="nothing")
    with pytest.raises(KeyError, match="truth_key"):
        match_score(multiome, key="match_true", truth_key="nothing")
    with pytest.raises(KeyError, match="modality"):
        match_score(multiome, key="match_true", mod1="adt")


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, "64", True])
def test_foscttm_rejects_bad_chunk_size(chunk_size):
    x = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        foscttm(x, x + 0.1, chunk_size=chunk_size)


def expanded_foscttm(x, y, chunk_size):
    """FOSCTTM as the metric computed it before its distances were written in place (the values to reproduce)."""
    n = x.shape[0]
    closer = {"x": np.empty(n), "y": np.empty(n)}
    for start in range(0, n, chunk_size):
        part, own = slice(start, start + chunk_size), np.arange(start, min(start + chunk_size, n))
        for name, a, b in (("x", x, y), ("y", y, x)):
            distance = (a**2).sum(1)[part, None] + (b**2).sum(1)[None, :] - 2 * a[part] @ b.T
            true_distance = distance[own - start, own][:, None]
            closer[name][part] = (distance < true_distance).sum(1) + ((distance == true_distance).sum(1) - 1) / 2
    return float((closer["x"].mean() + closer["y"].mean()) / 2 / max(n - 1, 1))


def test_foscttm_equals_the_expanded_distances_and_holds_two_chunks_of_them():
    import tracemalloc

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 4)).round(1)  # rounded: many ties, which count half
    y = x + rng.normal(scale=0.5, size=x.shape).round(1)
    assert foscttm(x, y, chunk_size=1000) == expanded_foscttm(x, y, 1000)
    chunk_bytes = 1000 * x.shape[0] * 8
    tracemalloc.start()
    try:
        foscttm(x, y, chunk_size=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # At most two float64 chunk × n arrays (sum of norms, product) and their comparisons (one byte per entry).
    assert peak < 2.5 * chunk_bytes


def test_foscttm_chunks_by_default_within_a_fixed_number_of_distances(monkeypatch):
    import mumatch.metrics._matching as matching

    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    y = x + rng.normal(scale=0.5, size=x.shape)
    whole = foscttm(x, y, chunk_size=50)
    parts = []
    closer = matching._closer_than_partner
    monkeypatch.setattr(matching, "FOSCTTM_CHUNK_ENTRIES", 50 * 7)
    monkeypatch.setattr(matching, "_closer_than_partner", lambda *args: parts.append(args[-1]) or closer(*args))
    assert foscttm(x, y) == pytest.approx(whole)
    assert {part.stop - part.start for part in parts} == {7}


def test_foscttm_does_not_depend_on_chunk_size():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = x + rng.normal(scale=0.5, size=x.shape)
    expected = brute_foscttm(x, y)
    assert foscttm(x, y, chunk_size=1) == pytest.approx(expected)
    assert foscttm(x, y, chunk_size=7) == pytest.approx(expected)


@pytest.mark.parametrize("metric", [match_score, top_k_accuracy, foscttm])
def test_mudata_with_stale_obs_names_raises(multiome, metric):
    # Cells renamed in a modality without mdata.update() would silently drop out of the scoring.
    multiome.obsp["perfect"] = multiome.obsp["match_true"].copy()
    names = multiome["rna"].obs_names.to_numpy().copy()
    names[-20:] = [f"renamed{position}" for position in range(20)]
    multiome.mod["rna"].obs_names = names
    with pytest.raises(ValueError, match=r"mdata\.update\(\)"):
        metric(multiome, key="perfect")


@pytest.mark.parametrize("argument", ["x", "y"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_foscttm_rejects_non_finite_embeddings(argument, bad_value):
    # A NaN distance ties with nothing, not even itself: the score came out negative instead of raising.
    rng = np.random.default_rng(0)
    embeddings = {"x": rng.normal(size=(6, 3)), "y": rng.normal(size=(6, 3))}
    embeddings[argument][2, 1] = bad_value
    originals = {name: values.copy() for name, values in embeddings.items()}
    with pytest.raises(ValueError, match=f"'{argument}' contains NaN or infinite values"):
        foscttm(embeddings["x"], embeddings["y"])
    for name, values in embeddings.items():
        np.testing.assert_array_equal(values, originals[name])


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    "metric",
    [match_score, lambda prediction, truth: top_k_accuracy(prediction, truth, direction="forward")],
    ids=["match_score", "top_k_accuracy"],
)
def test_empty_prediction_raises(metric, sparse):
    prediction = sp.csr_matrix((0, 3)) if sparse else np.zeros((0, 3))
    with pytest.raises(ValueError, match="'prediction' has no rows"):
        metric(prediction, np.array([], dtype=np.int64))


def test_foscttm_of_empty_embeddings_raises():
    with pytest.raises(ValueError, match="have no rows"):
        foscttm(np.zeros((0, 3)), np.zeros((0, 3)))


@pytest.mark.parametrize("sparse", [False, True])
def test_truth_matrix_of_another_shape_raises(sparse):
    # Every pair of this 5 × 10 truth falls in the prediction's 6 columns: it used to be scored as if it fitted.
    truth = np.zeros((5, 10))
    truth[np.arange(5), np.arange(5)] = 1.0
    truth = sp.csr_matrix(truth) if sparse else truth
    with pytest.raises(ValueError, match=r"'truth' has shape \(5, 10\) but the prediction has shape \(5, 6\)"):
        match_score(np.ones((5, 6)), truth)
    with pytest.raises(ValueError, match=r"\(5, 10\).*\(5, 6\)"):
        top_k_accuracy(np.ones((5, 6)), truth, direction="forward")


def test_stored_zeros_in_a_sparse_truth_are_no_pairs():
    # Row 0 pairs with column 0 and stores an explicit zero at column 1: the zero is no second partner.
    truth = sp.csr_matrix((np.array([1.0, 0.0, 1.0]), (np.array([0, 0, 1]), np.array([0, 1, 1]))), shape=(2, 2))
    assert truth.nnz == 3
    prediction = np.array([[0.75, 0.25], [0.0, 1.0]])
    assert match_score(prediction, truth) == pytest.approx(0.875)
    assert top_k_accuracy(prediction, truth, direction="mean") == 1.0
    # The caller's matrix keeps its stored zero.
    assert truth.nnz == 3 and truth.data.tolist() == [1.0, 0.0, 1.0]


def test_stored_zeros_in_the_mudata_truth_are_no_pairs(multiome):
    # A stored zero between two cells without a true partner added a row (scored 0 by the perfect plan) to the scoring.
    truth = multiome.obsp["match_true"].tocoo()
    multiome.obsp["perfect"] = truth.tocsr()
    positions = {mod: multiome.obs_names.get_indexer(multiome[mod].obs_names) for mod in ("rna", "atac")}
    rna = np.setdiff1d(positions["rna"], truth.row)[0]
    atac = np.setdiff1d(positions["atac"], truth.col)[0]
    with_zero = sp.csr_matrix(
        (np.append(truth.data, 0.0), (np.append(truth.row, rna), np.append(truth.col, atac))), shape=truth.shape
    )
    assert with_zero.nnz == truth.nnz + 1
    multiome.obsp["match_true"] = with_zero
    assert match_score(multiome, key="perfect") == 1.0
    assert top_k_accuracy(multiome, key="perfect") == 1.0
    assert multiome.obsp["match_true"].nnz == truth.nnz + 1
