"""The truncated (sparse) kernel of the epsilon-scaling stages after the first."""

import math

import numpy as np
import pytest
import torch

import mumatch as mm
from mumatch.ot import _sinkhorn as sinkhorn_module
from mumatch.ot import _truncation
from mumatch.ot._cost import prepare_cost


def planted(n: int, seed: int = 0, sigma: float = 2.5, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    return x, x + sigma * rng.standard_normal((n, dim))


def whole_error(x, y, result) -> float:
    plan = mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost)
    return np.abs(plan.sum(1) - 1 / x.shape[0]).sum() + np.abs(plan.sum(0) - 1 / y.shape[0]).sum()


@pytest.mark.parametrize("mode", ["dense", "tiled"])
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-3), ("float64", 1e-5)])
def test_truncated_stages_give_the_plan_of_the_whole_kernel(mode, cost, dtype, tol):
    x, y = planted(400)
    # The same three stages in both types.
    kwargs = dict(epsilon=0.001, epsilon_start=0.016, cost=cost, tol=tol, max_iter=5000, mode=mode, dtype=dtype)
    truncated = mm.ot.sinkhorn(x, y, device="cpu", **kwargs)
    whole = mm.ot.sinkhorn(x, y, device="cpu", truncate=False, **kwargs)
    assert truncated.epsilon_schedule == [0.016, 0.004, 0.001]
    assert truncated.truncated_stages >= 2 and whole.truncated_stages == 0
    assert truncated.converged and whole_error(x, y, truncated) <= 1.1 * tol
    # The slow tail of a float64 solve is progress, not a stall: no stage is given up and redone.
    assert truncated.n_iter <= 1.2 * whole.n_iter + 10
    plan_truncated = mm.ot.plan_tile(x, y, truncated.f, truncated.g, truncated.epsilon, truncated.cost)
    plan_whole = mm.ot.plan_tile(x, y, whole.f, whole.g, whole.epsilon, whole.cost)
    assert np.abs(plan_truncated - plan_whole).sum() < 5 * tol
    assert (plan_truncated.argmax(1) == plan_whole.argmax(1)).mean() >= 0.99
    assert truncated.diagnostics()["truncated_stages"] == truncated.truncated_stages


def test_truncation_keeps_each_rows_entries_within_the_threshold():
    x, y = planted(150, seed=1)
    geometry = prepare_cost(x, y, "cosine", dtype=torch.float64, device=torch.device("cpu"))
    epsilon, threshold = 0.01, 8.0
    g = torch.as_tensor(mm.ot.sinkhorn(x, y, epsilon=epsilon, dtype="float64", device="cpu").g)
    pattern = _truncation.truncate_cost(geometry, g, epsilon, 2**28, threshold=threshold)
    unit_x = torch.as_tensor(x / np.linalg.norm(x, axis=1, keepdims=True))
    unit_y = torch.as_tensor(y / np.linalg.norm(y, axis=1, keepdims=True))
    neg_cost = geometry.scale * (unit_x @ unit_y.T) - geometry.offset
    shifted = (g[None, :] + neg_cost) / epsilon
    expected = shifted >= shifted.amax(dim=1, keepdim=True) - threshold
    assert 0 < expected.float().mean() < 0.5
    kept = torch.zeros_like(expected)
    kept[pattern.row, pattern.col] = True
    assert torch.equal(kept, expected)
    # Row-major, with the costs of the kept entries and a column order that lists the same entries.
    assert torch.equal(pattern.crow[1:] - pattern.crow[:-1], expected.sum(1))
    assert bool((pattern.row.diff() >= 0).all())
    np.testing.assert_allclose(pattern.neg_cost, neg_cost[pattern.row, pattern.col], atol=1e-12)
    assert torch.equal(pattern.t_col, pattern.row[pattern.order])
    assert bool((pattern.col[pattern.order].diff() >= 0).all())
    assert torch.equal(pattern.t_crow[1:] - pattern.t_crow[:-1], expected.sum(0))
    # A smaller epsilon's entries, found among these, are those a whole pass finds.
    restricted = pattern.restrict(g, epsilon / 4, threshold=threshold)
    direct = _truncation.truncate_cost(geometry, g, epsilon / 4, 2**28, threshold=threshold)
    assert direct is not None and direct.nnz < pattern.nnz
    assert torch.equal(restricted.row, direct.row) and torch.equal(restricted.col, direct.col)
    np.testing.assert_allclose(restricted.neg_cost, direct.neg_cost, atol=1e-12)


def test_a_column_left_without_entries_gives_no_truncation():
    x, y = planted(50, seed=2)
    geometry = prepare_cost(x, y, "cosine", dtype=torch.float32, device=torch.device("cpu"))
    g = torch.zeros(50)
    g[0] = 10.0  # every row's best column by far: the others keep no entry
    assert _truncation.truncate_cost(geometry, g, 0.01, 2**28) is None


def test_a_truncation_that_drops_mass_is_caught_on_the_whole_cost(monkeypatch):
    # Entries within e^-8 of each row's largest are not enough here: the check on the whole cost must see the
    # dropped mass and truncate again around the potentials it reached (or finish on the whole kernel).
    monkeypatch.setattr(_truncation, "TRUNCATION", 8.0)
    x, y = planted(300, seed=3)
    result = mm.ot.sinkhorn(x, y, epsilon=0.001, tol=1e-3, max_iter=5000, device="cpu")
    assert result.converged and whole_error(x, y, result) <= 1e-3 + 1e-4
    assert result.truncated_stages == 3  # stage 2, then the final stage twice


def test_slow_unbalanced_tails_are_not_taken_for_stalls():
    # Unbalanced solves iterate without Anderson acceleration; with tau = 1 the error took 200-250 iterations to
    # halve, and a detector asking for that every 50 iterations redid the stage on the whole kernel.
    x, y = planted(300, seed=5)
    kwargs = dict(epsilon=0.001, epsilon_start=0.016, tau=1.0, tol=1e-4, mode="dense", dtype="float64")
    truncated = mm.ot.sinkhorn(x, y, device="cpu", max_iter=3300, **kwargs)
    whole = mm.ot.sinkhorn(x, y, device="cpu", max_iter=3300, truncate=False, **kwargs)
    assert whole.converged and truncated.converged
    assert truncated.n_iter <= whole.n_iter + 10


def test_a_stalled_truncated_stage_is_finished_on_the_whole_kernel(monkeypatch):
    # The smallest threshold keeps each row's best column only: no coupling with uniform marginals exists on it.
    monkeypatch.setattr(_truncation, "TRUNCATION", 1e-9)
    monkeypatch.setattr(sinkhorn_module, "STALL_WINDOW", 5)
    x, y = planted(60, seed=4)
    result = mm.ot.sinkhorn(x, y, epsilon=0.001, tol=1e-3, max_iter=5000, device="cpu")
    assert result.converged and whole_error(x, y, result) <= 1e-3 + 1e-4


def test_a_truncation_over_the_memory_budget_is_not_built(monkeypatch):
    monkeypatch.setattr(_truncation, "BYTES_PER_ENTRY", 2**40)
    x, y = planted(200, seed=5)
    result = mm.ot.sinkhorn(x, y, epsilon=0.001, tol=1e-3, max_iter=5000, device="cpu")
    assert result.converged and result.truncated_stages == 0
    assert whole_error(x, y, result) <= 1e-3 + 1e-4
    geometry = prepare_cost(x, y, "cosine", dtype=torch.float32, device=torch.device("cpu"))
    assert _truncation.truncate_cost(geometry, torch.zeros(200), 0.001, 2**30) is None


def test_one_stage_problems_never_truncate():
    x, y = planted(100, seed=6)
    result = mm.ot.sinkhorn(x, y, epsilon=0.05, device="cpu")
    assert len(result.epsilon_schedule) == 1 and result.truncated_stages == 0


@pytest.mark.parametrize("value", [None, 1, "yes"])
def test_truncate_must_be_a_bool(value):
    x, y = planted(10)
    with pytest.raises(ValueError, match="truncate must be True or False"):
        mm.ot.sinkhorn(x, y, truncate=value)


def test_unbalanced_truncated_stages_match_the_whole_kernel():
    x, y = planted(200, seed=7)
    kwargs = dict(epsilon=0.001, epsilon_start=0.016, tau=0.1, tol=1e-4, max_iter=5000, dtype="float64")
    truncated = mm.ot.sinkhorn(x, y, device="cpu", **kwargs)
    whole = mm.ot.sinkhorn(x, y, device="cpu", truncate=False, **kwargs)
    assert truncated.converged and whole.converged and truncated.truncated_stages >= 2
    plan_truncated = mm.ot.plan_tile(x, y, truncated.f, truncated.g, truncated.epsilon, truncated.cost)
    plan_whole = mm.ot.plan_tile(x, y, whole.f, whole.g, whole.epsilon, whole.cost)
    assert math.isclose(plan_truncated.sum(), plan_whole.sum(), rel_tol=1e-3)
    assert np.abs(plan_truncated - plan_whole).sum() < 1e-3 * plan_whole.sum()


def test_the_final_truncated_stage_leaves_room_for_the_check():
    # Solved to tol itself, this stage's whole-cost check came out at 1.002e-3 against tol 1e-3 (rounding and the
    # dropped entries), failed, and the stage was truncated again for nothing.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 64))
    y = x + 2.5 * rng.standard_normal((2000, 64))
    result = mm.ot.sinkhorn(x, y, epsilon=0.001, tol=1e-3, device="cpu", mode="dense")
    assert result.converged and result.truncated_stages == 2


def test_a_stall_is_less_than_a_tenth_off_the_error_over_fifty_iterations():
    # The documented rule, step by step: checked once per STALL_WINDOW iterations against the error at the last check.
    assert (sinkhorn_module.STALL_WINDOW, sinkhorn_module.STALL_PROGRESS) == (50, 0.1)
    solver = sinkhorn_module._SparseSolver.__new__(sinkhorn_module._SparseSolver)
    solver._checkpoint = (0, math.inf)
    assert not solver.stalled(49, 1.0)  # within the first window: never
    assert not solver.stalled(50, 1.0)  # the first check, against an infinite error
    assert not solver.stalled(60, 5.0)  # between checks, whatever the error
    assert not solver.stalled(100, 0.89)  # 11 % lower in 50 iterations: progress (a slow tail)
    assert solver.stalled(150, 0.81)  # 9 % lower: stalled
    assert solver.stalled(200, 0.81)  # not lower at all
    assert not solver.stalled(250, 0.5)
