"""Matching metrics: the NeurIPS 2021 match score, top-k accuracy and FOSCTTM.

Each metric takes either arrays (a prediction matrix and the truth) or ``(mdata, key, truth_key)``: a plan in
``mdata.obsp[key]`` (or, for FOSCTTM, an embedding in ``.obsm[key]``) scored against the ground truth in
``mdata.obsp[truth_key]`` on the cells that have one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from .._layout import check_one_space, embedding_mods, extract_block, oriented_plan, recorded_plan_mods
from .._validate import check_int, check_mod, check_obs_names, check_rep

# Distances per FOSCTTM chunk by default (128 MB of float64): the chunk's rows shrink as the cells grow, so that one
# chunk of 1M test cells is not 1024 × 1M (8 GB).
FOSCTTM_CHUNK_ENTRIES = 2**24

Matrix = np.ndarray | sp.spmatrix


def _truth_columns(truth: Matrix | np.ndarray, n_rows: int) -> np.ndarray:
    """The true column of every row, from an index array or a matrix with one non-zero per row."""
    truth_array = None if sp.issparse(truth) else np.asarray(truth)
    if truth_array is not None and truth_array.ndim == 1:
        numeric = truth_array.dtype.kind in "iuf"
        if truth_array.size and (not numeric or not np.all(np.isfinite(truth_array) & (truth_array % 1 == 0))):
            raise ValueError("'truth' as an index array must hold whole column numbers (no NaN or fractions)")
        columns = truth_array.astype(np.int64)
    else:
        matrix = _without_stored_zeros(truth)
        if np.any(np.diff(matrix.indptr) != 1):
            raise ValueError("'truth' must have exactly one non-zero entry per row (a pairing)")
        columns = matrix.indices.astype(np.int64)
    if columns.size != n_rows:
        raise ValueError(f"'truth' pairs {columns.size} rows but the prediction has {n_rows}")
    return columns


def _without_stored_zeros(matrix: Matrix | np.ndarray) -> sp.csr_matrix:
    """``matrix`` as CSR without explicitly stored zeros, on a copy: a stored zero pairs no cells."""
    matrix = sp.csr_matrix(matrix, copy=True)
    matrix.eliminate_zeros()
    return matrix


def _check_prediction(prediction: Matrix) -> sp.csr_matrix | np.ndarray:
    if sp.issparse(prediction):
        prediction = sp.csr_matrix(prediction, dtype=np.float64)
        values = prediction.data
    else:
        prediction = np.asarray(prediction, dtype=np.float64)
        if prediction.ndim != 2:
            raise ValueError(f"'prediction' must be a 2-d matrix, got shape {prediction.shape}")
        values = prediction
    # An empty prediction has no score (the mean over no rows is NaN): refuse it rather than return one.
    if prediction.shape[0] == 0:
        raise ValueError(f"'prediction' has no rows (shape {prediction.shape}); pass at least one cell to score")
    if prediction.shape[1] == 0:
        raise ValueError(f"'prediction' has no columns (shape {prediction.shape}); pass at least one candidate cell")
    if not np.isfinite(values).all():
        raise ValueError("'prediction' contains NaN or infinite values")
    return prediction


def _from_mudata(
    mdata: MuData,
    key: str,
    truth_key: str,
    mod1: str | None,
    mod2: str | None,
    *,
    candidates: bool | Literal["backward"] = True,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """Plan and truth on the cells that have a true partner: (plan, truth columns, index1, index2).

    The plan's rows are the cells of ``mod1`` with a true partner. With ``candidates``, its columns are every cell
    of ``mod2`` the plan gives weight to from those rows, besides the true partners: weight on a cell without a true
    partner (e.g. a training cell, with ``match_ot(cells="all")``) is weight taken from the true one, and counts in
    the row's sum and rank. Without, the columns are the true partners only (the square block FOSCTTM ranks in).
    ``"backward"`` gives the transposed view: the true partners of ``mod2`` as rows, over their candidate cells of
    ``mod1``.
    """
    mod1, mod2 = _default_mods(mdata, mod1, mod2, key)
    for mod in (mod1, mod2):
        check_obs_names(mdata, mod)
    if truth_key not in mdata.obsp:
        raise KeyError(f"truth_key={truth_key!r} not found in mdata.obsp (it has {list(mdata.obsp)})")
    index1 = np.arange(mdata[mod1].n_obs)
    index2 = np.arange(mdata[mod2].n_obs)
    truth = _without_stored_zeros(extract_block(mdata, mdata.obsp[truth_key], mod1, mod2, index1, index2))
    if truth.nnz == 0:
        # A truth stored the other way round (the readers put the first modality's cells along its rows), read for
        # the modalities in reverse order.
        transposed = sp.csr_matrix(mdata.obsp[truth_key]).T
        truth = _without_stored_zeros(extract_block(mdata, transposed, mod1, mod2, index1, index2))
    rows = np.flatnonzero(truth.getnnz(axis=1))
    cols = np.flatnonzero(truth.getnnz(axis=0))
    if rows.size == 0:
        raise ValueError(f"mdata.obsp['{truth_key}'] pairs no cell of '{mod1}' with a cell of '{mod2}'")
    truth = truth[rows][:, cols]
    columns = _truth_columns(truth, rows.size)
    plan = None
    if key is not None:
        if key not in mdata.obsp:
            raise KeyError(f"key={key!r} not found in mdata.obsp (it has {list(mdata.obsp)}); run mm.tl.match_ot first")
        oriented = oriented_plan(mdata, key, mod1, mod2)
        if candidates == "backward":
            # The columns' view: each true partner of mod2 ranks every mod1 cell that gives it weight.
            plan = extract_block(mdata, oriented, mod1, mod2, index1, cols)
            kept = np.union1d(rows, np.flatnonzero(plan.getnnz(axis=1)))
            true_rows = np.empty(cols.size, dtype=np.int64)
            true_rows[columns] = rows  # the truth is one-to-one here (checked by the caller)
            plan = plan[kept].T.tocsr()
            columns = np.searchsorted(kept, true_rows)
        elif candidates:
            plan = extract_block(mdata, oriented, mod1, mod2, rows, index2)
            kept = np.union1d(cols, np.flatnonzero(plan.getnnz(axis=0)))
            plan = plan[:, kept].tocsr()
            columns = np.searchsorted(kept, cols[columns])
        else:
            plan = extract_block(mdata, oriented, mod1, mod2, rows, cols)
    return plan, columns, rows, cols


def _default_mods(mdata: MuData, mod1: str | None, mod2: str | None, key: str | None = None) -> tuple[str, str]:
    """Given, else the reader's task, else the pair (and direction) ``key`` records, else the first two modalities.

    The reader's task keeps its direction when ``key`` (a plan, or a trained embedding) is between its two
    modalities (the competition scores the mod1 cells' rows); a plan or an embedding of other modalities (e.g. a
    third one of the same cells) is scored between its own. Without a reader's task, a plan is scored in the
    direction it was solved in, whatever the order of ``mdata.mod``.
    """
    reader = mdata.uns.get("neurips2021", {})
    names = list(mdata.mod)
    first_two = (names[0], names[min(1, len(names) - 1)])
    reader_task = (reader.get("mod1"), reader.get("mod2")) if reader.get("mod1") and reader.get("mod2") else None
    task = reader_task or first_two
    if mod1 is None and mod2 is None and key is not None:
        # A plan's or a CLIP embedding's recorded pair; a CLUE embedding's modalities when they are two.
        trained = embedding_mods(mdata, key)
        recorded = recorded_plan_mods(mdata, key) or (tuple(trained) if trained and len(trained) == 2 else None)
        if recorded is not None and (reader_task is None or set(recorded) != set(reader_task)):
            mod1, mod2 = recorded
    given = [name for name, value in (("mod1", mod1), ("mod2", mod2)) if value is not None]
    mod1 = mod1 or task[0]
    mod2 = mod2 or task[1]
    check_mod(mdata, mod1, "mod1")
    check_mod(mdata, mod2, "mod2")
    if mod1 == mod2:
        # e.g. mod1 given alone, equal to the default mod2: the truth would pair no cell, which says nothing of why.
        defaulted = f" ({' and '.join(sorted({'mod1', 'mod2'} - set(given)))} by default)" if len(given) < 2 else ""
        raise ValueError(
            f"mod1 and mod2 are both {mod1!r}{defaulted}; a plan or an embedding is scored between two different "
            "modalities: pass both mod1= and mod2="
        )
    return mod1, mod2


def _refuse_anndata(value: object, argument: str) -> None:
    """An AnnData is neither a MuData with a plan nor a matrix: say so, rather than fail on it as a matrix."""
    if isinstance(value, AnnData):
        raise TypeError(
            f"'{argument}' is an AnnData; pass the MuData whose .obsp holds the plan and the ground truth, or a matrix"
        )


def _resolve(prediction, truth, key, truth_key, mod1, mod2) -> tuple[sp.csr_matrix | np.ndarray, np.ndarray]:
    _refuse_anndata(prediction, "prediction")
    if isinstance(prediction, MuData):
        plan, columns, _, _ = _from_mudata(prediction, key, truth_key, mod1, mod2)
        return _check_prediction(plan), columns
    if truth is None:
        raise ValueError("'truth' is required when 'prediction' is a matrix")
    prediction = _check_prediction(prediction)
    truth_shape = truth.shape if sp.issparse(truth) else np.shape(truth)
    if len(truth_shape) not in (1, 2):
        raise ValueError(
            f"'truth' must be an index array (1-d) or a matrix (2-d), got shape {truth_shape}; pass the true column "
            "of each row, or a matrix of the prediction's shape with one non-zero per row"
        )
    if len(truth_shape) == 2 and truth_shape != prediction.shape:
        # Without this, a wider truth whose pairs happen to fall in the prediction's columns would be scored.
        raise ValueError(
            f"'truth' has shape {truth_shape} but the prediction has shape {prediction.shape}; pass a truth matrix "
            "of the prediction's shape, or the true column of each row as an index array"
        )
    columns = _truth_columns(truth, prediction.shape[0])
    if columns.size and (columns.min() < 0 or columns.max() >= prediction.shape[1]):
        raise ValueError(f"'truth' refers to columns outside the prediction's {prediction.shape[1]} columns")
    return prediction, columns


def match_score(
    prediction: Matrix | MuData,
    truth: Matrix | np.ndarray | None = None,
    *,
    key: str = "match",
    truth_key: str = "match_true",
    mod1: str | None = None,
    mod2: str | None = None,
) -> float:
    """The NeurIPS 2021 match score: mean over rows of ``P[i, true(i)] / Σ_j P[i, j]``, negatives clipped to 0.

    A row that sums to zero scores 0; a random prediction scores about ``1 / n_columns``.

    Parameters
    ----------
    prediction
        A (cells of mod1 × cells of mod2) prediction, dense or sparse; or a MuData holding it in ``.obsp[key]``.
    truth
        The true column of each row (an index array) or a matrix with one non-zero per row. Ignored for a MuData.
    key, truth_key
        With a MuData: the plan and the ground truth in ``mdata.obsp``. The rows scored are the cells with a true
        partner; their sums include weight on any cell of ``mod2``, with a true partner or not (e.g. training cells
        of a plan over ``cells="all"``).
    mod1, mod2
        With a MuData: the modalities of the rows and columns. Default: the reader's mod1 and mod2 (the
        competition's direction) for a plan between them; else the pair, in the direction ``match_ot`` solved
        it, that ``mdata.uns[key]`` records; else the first two modalities. A plan that ``match_ot`` solved the
        other way round is transposed.

    Returns
    -------
    The score, in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from mumatch.metrics import match_score
    >>> match_score(np.array([[0.5, 0.5], [0.0, 2.0]]), np.array([0, 1]))
    0.75
    """
    prediction, columns = _resolve(prediction, truth, key, truth_key, mod1, mod2)
    if sp.issparse(prediction):
        clipped = prediction.maximum(0).tocsr()
        row_sums = np.asarray(clipped.sum(axis=1)).ravel()
        hits = np.asarray(clipped[np.arange(columns.size), columns]).ravel()
    else:
        clipped = np.maximum(prediction, 0)
        row_sums = clipped.sum(axis=1)
        hits = clipped[np.arange(columns.size), columns]
    scores = np.divide(hits, row_sums, out=np.zeros_like(hits), where=row_sums > 0)
    return float(scores.mean())


def _rank_counts(prediction: sp.csr_matrix | np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row: how many other entries are larger than the true column's entry, and how many equal it."""
    rows = np.arange(columns.size)
    if not sp.issparse(prediction):
        hits = prediction[rows, columns]
        greater = (prediction > hits[:, None]).sum(axis=1)
        ties = (prediction == hits[:, None]).sum(axis=1) - 1
        return greater, ties
    prediction = sp.csr_matrix(prediction, copy=True)
    prediction.eliminate_zeros()
    hits = np.asarray(prediction[rows, columns]).ravel()
    row_of_entry = np.repeat(rows, np.diff(prediction.indptr))
    n_implicit = prediction.shape[1] - np.diff(prediction.indptr)
    greater = np.bincount(row_of_entry[prediction.data > hits[row_of_entry]], minlength=rows.size)
    ties = np.bincount(row_of_entry[prediction.data == hits[row_of_entry]], minlength=rows.size)
    # Entries that are not stored are zeros: they outrank a negative true entry and tie with a missing one.
    greater = greater + np.where(hits < 0, n_implicit, 0)
    ties = np.where(hits == 0, n_implicit, ties) - 1
    return greater, ties


def top_k_accuracy(
    prediction: Matrix | MuData,
    truth: Matrix | np.ndarray | None = None,
    *,
    k: int = 1,
    direction: Literal["forward", "backward", "mean"] = "mean",
    key: str = "match",
    truth_key: str = "match_true",
    mod1: str | None = None,
    mod2: str | None = None,
) -> float:
    """Fraction of cells whose true partner is among their ``k`` highest-scored candidates.

    Parameters
    ----------
    prediction, truth, key, truth_key, mod1, mod2
        As in :func:`match_score`.
    k
        How many candidates count.
    direction
        ``"forward"``: rows (mod1 cells) look for their column; ``"backward"``: columns look for their row (needs a
        square 1:1 truth); ``"mean"``: the mean of both.

    Returns
    -------
    The accuracy in [0, 1]. Ties are broken at random, in expectation: a uniform prediction scores ``k / n``.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if direction not in ("forward", "backward", "mean"):
        raise ValueError(f"direction={direction!r}; choose 'forward', 'backward' or 'mean'")
    mdata = prediction if isinstance(prediction, MuData) else None
    prediction, columns = _resolve(prediction, truth, key, truth_key, mod1, mod2)
    forward = _expected_hits(*_rank_counts(prediction, columns), k)
    if direction == "forward":
        return forward
    if mdata is not None:
        if np.unique(columns).size != columns.size:
            raise ValueError("direction='backward' needs a one-to-one truth")
        transposed, true_rows, _, _ = _from_mudata(mdata, key, truth_key, mod1, mod2, candidates="backward")
        backward = _expected_hits(*_rank_counts(_check_prediction(transposed), true_rows), k)
    else:
        if np.unique(columns).size != columns.size or prediction.shape[0] != prediction.shape[1]:
            raise ValueError("direction='backward' needs a square prediction with a one-to-one truth")
        backward = _expected_hits(*_rank_counts(prediction.T, np.argsort(columns)), k)
    return backward if direction == "backward" else (forward + backward) / 2


def foscttm(
    x: np.ndarray | MuData,
    y: np.ndarray | None = None,
    *,
    key: str = "match",
    truth_key: str = "match_true",
    mod1: str | None = None,
    mod2: str | None = None,
    chunk_size: int | None = None,
) -> float:
    """Fraction Of Samples Closer Than the True Match (lower is better; 0.5 is random).

    Parameters
    ----------
    x, y
        Two aligned embeddings (row ``i`` of ``x`` and of ``y`` are the same cell), compared with Euclidean
        distances; or a MuData with ``x`` only.
    key
        With a MuData: an embedding present in ``.obsm`` of both modalities, or a plan in ``.obsp`` (a larger plan
        entry counts as closer).
    truth_key, mod1, mod2
        With a MuData: the ground truth in ``mdata.obsp`` and the two modalities (default: as :func:`match_score`;
        for an embedding, the pair ``train_clip`` recorded). An embedding must hold one space in both.
    chunk_size
        Rows of the distance matrix computed at once (memory stays O(chunk_size × n)); ``None``: as many as keep a
        chunk within :data:`FOSCTTM_CHUNK_ENTRIES` distances (128 MB of float64 at any number of cells).

    Returns
    -------
    The mean, over both directions and all cells, of the fraction of the other modality's cells that are closer than
    the true partner.
    """
    check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
    _refuse_anndata(x, "x")
    if isinstance(x, MuData):
        mdata = x
        mod1, mod2 = _default_mods(mdata, mod1, mod2, key)
        in_obsp = key in mdata.obsp
        plan, columns, rows, cols = _from_mudata(
            mdata, key if in_obsp else None, truth_key, mod1, mod2, candidates=False
        )
        if in_obsp:
            return _foscttm_scores(_check_prediction(plan), columns)
        x = check_rep(mdata, mod1, key, "key")[rows]
        y = check_rep(mdata, mod2, key, "key")[cols][columns]
        check_one_space(mdata, [mod1, mod2], key, "key")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must be aligned 2-d embeddings of the same shape, got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"'x' and 'y' have no rows (shape {x.shape}); pass at least one cell to score")
    for argument, values in (("x", x), ("y", y)):
        # A NaN distance ties with nothing, not even itself, and would make the tie count negative.
        if not np.isfinite(values).all():
            raise ValueError(f"'{argument}' contains NaN or infinite values; pass finite embeddings")
    n_cells = x.shape[0]
    closer_x = np.empty(n_cells)
    closer_y = np.empty(n_cells)
    x_norms, y_norms = (x**2).sum(1), (y**2).sum(1)
    if chunk_size is None:
        chunk_size = max(1, FOSCTTM_CHUNK_ENTRIES // n_cells)
    for start in range(0, n_cells, chunk_size):
        part = slice(start, start + chunk_size)
        closer_x[part] = _closer_than_partner(x, y, x_norms, y_norms, part)
        closer_y[part] = _closer_than_partner(y, x, y_norms, x_norms, part)
    return float((closer_x.mean() + closer_y.mean()) / 2 / max(n_cells - 1, 1))


def _closer_than_partner(
    points: np.ndarray, others: np.ndarray, norms: np.ndarray, other_norms: np.ndarray, part: slice
) -> np.ndarray:
    """For each row ``part`` of ``points``: how many of ``others`` are closer than its partner (the same row).

    The true distance comes from the same expansion as the others, so rounding never ranks a cell against itself.
    A tie counts half (as in the plan's version): a collapsed embedding scores 0.5, not a perfect 0.
    """
    own = np.arange(part.start, min(part.stop, points.shape[0]))
    # The product subtracted in place (the same values as ``a + b - 2 x·y``): two chunk × n float64 arrays at a
    # time instead of three.
    distance = norms[part, None] + other_norms[None, :]
    distance -= 2 * points[part] @ others.T
    true_distance = distance[own - part.start, own][:, None]
    return (distance < true_distance).sum(1) + ((distance == true_distance).sum(1) - 1) / 2


def _expected_hits(greater: np.ndarray, ties: np.ndarray, k: int) -> float:
    """Mean probability that the true entry lands among the top ``k`` when ties are broken at random."""
    return float(np.mean(np.clip((k - greater) / (ties + 1), 0.0, 1.0)))


def _foscttm_scores(prediction: sp.csr_matrix | np.ndarray, columns: np.ndarray) -> float:
    """FOSCTTM of a plan: the fraction of candidates with a larger entry than the true partner (ties count half)."""
    greater, ties = _rank_counts(prediction, columns)
    forward = (greater + ties / 2) / max(prediction.shape[1] - 1, 1)
    if prediction.shape[0] == prediction.shape[1] and np.unique(columns).size == columns.size:
        greater, ties = _rank_counts(prediction.T, np.argsort(columns))
        backward = (greater + ties / 2) / max(prediction.shape[0] - 1, 1)
        return float((forward.mean() + backward.mean()) / 2)
    return float(forward.mean())
