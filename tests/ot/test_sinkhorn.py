from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mumatch as mm
from mumatch.ot import _cost as cost_module
from mumatch.ot import _sinkhorn as sinkhorn_module

FAST = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def clouds(n_rows: int, n_cols: int, dim: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, dim))
    y = np.vstack([x, rng.normal(size=(max(0, n_cols - n_rows), dim))])[:n_cols]
    y = y + noise * rng.normal(size=(n_cols, dim))
    return x, y


def matchclot_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MatchCLOT's OT_matching cost, written from its description: 1 - cos, min shifted to 1, divided by the max."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    cost = 1.0 - xn @ yn.T
    cost = cost - cost.min() + 1.0
    return cost / cost.max()


def brute_force_sinkhorn(cost: np.ndarray, epsilon: float, n_iter: int = 20000) -> np.ndarray:
    """Textbook float64 log-domain Sinkhorn with uniform marginals, finished by Newton steps where it is too slow.

    On a tiny, nearly discrete problem (2 × 2 or 3 × 3 whose plan keeps ~1e-9 of its mass off its matching) the
    textbook iterations contract by ~1e-4 each: after 20,000 of them the rows were still 1e-6 off their marginal and
    the reference, not the solver, failed the comparison (4 of 200 examples of the property test below at 2 × 2 or
    3 × 3; e.g. n_rows=n_cols=2, seed=2). Newton's method on g (f eliminated, exact Jacobian) then reaches the same
    fixed point, the plan being a diagonal scaling of exp(-cost / epsilon) either way.
    """
    n_rows, n_cols = cost.shape
    log_a, log_b = -np.log(n_rows), -np.log(n_cols)
    f, g = np.zeros(n_rows), np.zeros(n_cols)

    def solve_f(g):
        return epsilon * (log_a - np.logaddexp.reduce((g[None, :] - cost) / epsilon, axis=1))

    def plan_of(g):
        return np.exp((solve_f(g)[:, None] + g[None, :] - cost) / epsilon)

    def column_error(g):
        return np.abs(plan_of(g).sum(0) - 1 / n_cols).sum()

    for _ in range(n_iter):
        f = solve_f(g)
        z = (f[:, None] - cost) / epsilon
        g = epsilon * (log_b - np.logaddexp.reduce(z, axis=0))
        plan = np.exp((f[:, None] + g[None, :] - cost) / epsilon)
        if np.abs(plan.sum(1) - 1 / n_rows).sum() < 1e-12:
            return plan
    g = g - g.mean()  # g + c gives the same plan: keep the Newton system's null direction out of the iterate
    for _ in range(100):
        plan = plan_of(g)
        if column_error(g) < 1e-13:
            return plan
        columns = plan.sum(0)
        # d columns / d g with f re-solved for every g (rows fixed at 1 / n_rows), singular along g + c.
        jacobian = (np.diag(columns) - plan.T @ (plan * n_rows)) / epsilon
        step = np.linalg.lstsq(jacobian, 1 / n_cols - columns, rcond=None)[0]
        step -= step.mean()
        scale = 1.0
        while column_error(g + scale * step) > column_error(g) and scale > 1e-8:
            scale /= 2
        g = g + scale * step
    raise AssertionError(f"the reference did not converge: column error {column_error(g):.2e}")


def full_plan(x, y, result) -> np.ndarray:
    return mm.ot.plan_tile(x, y, result.f, result.g, result.epsilon, result.cost)


@FAST
@given(
    n_rows=st.integers(2, 40),
    n_cols=st.integers(2, 40),
    dim=st.integers(2, 10),
    seed=st.integers(0, 10_000),
    epsilon=st.sampled_from([0.001, 0.003, 0.01, 0.1]),
    cost=st.sampled_from(["cosine", "sqeuclidean"]),
)
def test_marginals_within_tol(n_rows, n_cols, dim, seed, epsilon, cost):
    x, y = clouds(n_rows, n_cols, dim, seed)
    result = mm.ot.sinkhorn(x, y, epsilon=epsilon, cost=cost, tol=1e-3, max_iter=5000, device="cpu")
    assert result.converged
    plan = full_plan(x, y, result)
    error = np.abs(plan.sum(1) - 1 / n_rows).sum() + np.abs(plan.sum(0) - 1 / n_cols).sum()
    assert error <= 1e-3 + 1e-4  # float32 solve, float64 recomputation
    assert np.isfinite(result.f).all() and np.isfinite(result.g).all()


@FAST
@given(n_cols=st.integers(2, 30), seed=st.integers(0, 10_000), mode=st.sampled_from(["dense", "tiled"]))
def test_permuting_y_permutes_the_plan(n_cols, seed, mode):
    x, y = clouds(25, n_cols, 6, seed)
    perm = np.random.default_rng(seed).permutation(n_cols)
    kwargs = {"epsilon": 0.05, "tol": 1e-6, "dtype": "float64", "mode": mode, "max_iter": 5000, "device": "cpu"}
    plan = full_plan(x, y, mm.ot.sinkhorn(x, y, **kwargs))
    plan_perm = full_plan(x, y[perm], mm.ot.sinkhorn(x, y[perm], **kwargs))
    np.testing.assert_allclose(plan_perm, plan[:, perm], atol=1e-6 / 25)


@FAST
@given(n=st.integers(2, 50), seed=st.integers(0, 10_000), cost=st.sampled_from(["cosine", "sqeuclidean"]))
def test_planted_identity_is_recovered(n, seed, cost):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16))
    y = x + 0.01 * rng.normal(size=x.shape)
    result = mm.ot.sinkhorn(x, y, epsilon=0.01, cost=cost, device="cpu")
    sparse = mm.ot.sparsify_plan(x, y, result.f, result.g, result.epsilon, result.cost, device="cpu")
    np.testing.assert_array_equal(sparse.plan.argmax(axis=1).A1, np.arange(n))


@FAST
@given(n_rows=st.integers(2, 30), n_cols=st.integers(2, 30), seed=st.integers(0, 10_000))
@example(n_rows=2, n_cols=2, seed=2).via("nearly discrete: the textbook reference needs its Newton steps")
@example(n_rows=3, n_cols=3, seed=12).via("nearly discrete: the textbook reference needs its Newton steps")
def test_agrees_with_brute_force_log_domain(n_rows, n_cols, seed):
    x, y = clouds(n_rows, n_cols, 5, seed)
    result = mm.ot.sinkhorn(x, y, epsilon=0.05, dtype="float64", tol=1e-10, max_iter=20000, device="cpu")
    reference = brute_force_sinkhorn(matchclot_cost(x, y), 0.05)
    np.testing.assert_allclose(full_plan(x, y, result), reference, atol=1e-7)


def squared_euclidean_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The documented squared-Euclidean cost, written from its description: squared distances over their largest."""
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return cost / cost.max()


@FAST
@given(n_rows=st.integers(2, 30), n_cols=st.integers(2, 30), seed=st.integers(0, 10_000))
def test_squared_euclidean_agrees_with_brute_force_log_domain(n_rows, n_cols, seed):
    # Points off the origin and not of unit scale: the solver's centring and rescaling must leave the cost as
    # documented (squared distances divided by their largest), the plan as the textbook reference's.
    x, y = clouds(n_rows, n_cols, 5, seed)
    x, y = 3.0 * x + 7.0, 3.0 * y + 7.0
    result = mm.ot.sinkhorn(
        x, y, epsilon=0.05, cost="sqeuclidean", dtype="float64", tol=1e-10, max_iter=20000, device="cpu"
    )
    reference = brute_force_sinkhorn(squared_euclidean_cost(x, y), 0.05)
    np.testing.assert_allclose(full_plan(x, y, result), reference, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tau", [None, 1.0])
def test_tiled_equals_dense(dtype, tau):
    x, y = clouds(120, 90, 8, 3)
    tol = 1e-8 if dtype == "float64" else 1e-5
    kwargs = {"epsilon": 0.03, "tol": tol, "dtype": dtype, "tau": tau, "max_iter": 5000, "device": "cpu"}
    dense = mm.ot.sinkhorn(x, y, mode="dense", **kwargs)
    # A budget of a few rows forces many tiles.
    tiled = mm.ot.sinkhorn(x, y, mode="tiled", memory_budget=30 * 90 * 8, **kwargs)
    assert dense.mode == "dense" and tiled.mode == "tiled"
    atol = 1e-6 / 120 if dtype == "float64" else 1e-3 / 120  # both stop within tol, from either side
    np.testing.assert_allclose(full_plan(x, y, tiled), full_plan(x, y, dense), atol=atol)


def test_tiled_with_many_blocks_equals_dense():
    # Several strips of rows and more columns than one block (BLOCK_COLS).
    x, y = clouds(40, 2500, 6, 4)
    kwargs = {"epsilon": 0.03, "tol": 1e-9, "dtype": "float64", "max_iter": 5000, "device": "cpu"}
    dense = mm.ot.sinkhorn(x, y, mode="dense", **kwargs)
    tiled = mm.ot.sinkhorn(x, y, mode="tiled", memory_budget=9 * 2500 * 8, **kwargs)
    np.testing.assert_allclose(full_plan(x, y, tiled), full_plan(x, y, dense), atol=1e-9 / 40)


def test_tiled_exact_row_max_fallback_gives_the_same_solve(monkeypatch):
    # An empty range for the shifted row sums forces every strip of every pass onto the exact row max.
    x, y = clouds(60, 50, 6, 5)
    kwargs = {"epsilon": 0.05, "tol": 1e-4, "mode": "tiled", "memory_budget": 8 * 50 * 4, "device": "cpu"}
    shifted = mm.ot.sinkhorn(x, y, **kwargs)
    monkeypatch.setitem(sinkhorn_module.SHIFTED_SUM_RANGE, torch.float32, (np.inf, np.inf))
    exact = mm.ot.sinkhorn(x, y, **kwargs)
    assert exact.n_iter == shifted.n_iter
    np.testing.assert_allclose(full_plan(x, y, exact), full_plan(x, y, shifted), atol=1e-4 / 60)


def test_auto_mode_follows_the_memory_budget():
    x, y = clouds(50, 40, 4, 0)
    assert mm.ot.sinkhorn(x, y, device="cpu").mode == "dense"
    assert mm.ot.sinkhorn(x, y, device="cpu", memory_budget=1000).mode == "tiled"
    assert mm.ot.sinkhorn(x, y, device="cpu", memory_budget=50 * 40 * 4.0).mode == "dense"  # a float is fine


def test_automatic_memory_budget_is_a_quarter_of_the_available_memory(monkeypatch):
    cpu = torch.device("cpu")
    available = {"bytes": 4 * 2**30}
    monkeypatch.setattr(cost_module, "available_memory", lambda device: available["bytes"])
    assert cost_module.resolve_memory_budget(None, cpu) == 2**30
    available["bytes"] = 64 * 2**30
    assert cost_module.resolve_memory_budget(None, cpu) == cost_module.AUTO_BUDGET_CAP
    available["bytes"] = 2**20
    assert cost_module.resolve_memory_budget(None, cpu) == cost_module.AUTO_BUDGET_FLOOR
    available["bytes"] = None
    assert cost_module.resolve_memory_budget(None, cpu) == cost_module.DEFAULT_MEMORY_BUDGET
    assert cost_module.resolve_memory_budget(12345, cpu) == 12345
    # With little memory left, a problem that would be dense under the cap is solved tiled (floor lowered, so that a
    # small problem shows it).
    monkeypatch.setattr(cost_module, "AUTO_BUDGET_FLOOR", 1)
    x, y = clouds(300, 200, 4, 0)
    available["bytes"] = 4 * 300 * 200 * 4 - 4
    assert mm.ot.sinkhorn(x, y, device="cpu").mode == "tiled"
    available["bytes"] = 4 * 300 * 200 * 4
    assert mm.ot.sinkhorn(x, y, device="cpu").mode == "dense"


def test_available_memory_is_read_on_this_machine():
    available = cost_module.available_memory(torch.device("cpu"))
    assert available is not None and available > 0


@pytest.mark.parametrize("mode", ["dense", "tiled"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiny_epsilon_stays_finite(mode, dtype):
    x, y = clouds(60, 60, 8, 1)
    result = mm.ot.sinkhorn(x, y, epsilon=1e-4, mode=mode, dtype=dtype, max_iter=3000, device="cpu")
    assert np.isfinite(result.f).all() and np.isfinite(result.g).all()
    assert np.isfinite(result.marginal_error)
    assert len(result.epsilon_schedule) > 1  # annealed down to 1e-4
    plan = full_plan(x, y, result)
    assert np.isfinite(plan).all()
    assert abs(plan.sum() - 1) < 0.05


def test_unbalanced_relaxes_the_marginals():
    x, y = clouds(40, 80, 6, 2)
    balanced = mm.ot.sinkhorn(x, y, epsilon=0.05, dtype="float64", tol=1e-8, max_iter=5000, device="cpu")
    loose = mm.ot.sinkhorn(x, y, epsilon=0.05, tau=0.01, dtype="float64", tol=1e-8, max_iter=5000, device="cpu")
    strict = mm.ot.sinkhorn(x, y, epsilon=0.05, tau=1e4, dtype="float64", tol=1e-10, max_iter=5000, device="cpu")
    assert loose.converged and loose.tau == 0.01
    np.testing.assert_allclose(full_plan(x, y, strict), full_plan(x, y, balanced), atol=1e-5)
    loose_cols = full_plan(x, y, loose).sum(0)
    assert np.abs(loose_cols - 1 / 80).sum() > 1e-3  # columns are no longer forced to be uniform


@pytest.mark.parametrize("mode", ["dense", "tiled"])
def test_unbalanced_convergence_is_the_distance_to_the_fixed_point(mode):
    # At the relaxed fixed point the plan's columns sum to b · exp(-g / tau) and its rows to a · exp(-f / tau). A
    # small change of the columns in one iteration (the former criterion) said converged 0.27 (L1) away from it.
    x, y = clouds(60, 50, 5, 3)
    result = mm.ot.sinkhorn(
        x, y, epsilon=0.01, tau=1.0, tol=1e-4, max_iter=20000, dtype="float64", mode=mode, device="cpu"
    )
    plan = full_plan(x, y, result)
    epsilon, tau = 0.01, 1.0
    row_target = np.exp(-(result.f - epsilon * np.log(1 / 60)) / tau) / 60
    column_target = np.exp(-(result.g - epsilon * np.log(1 / 50)) / tau) / 50
    rows = np.abs(plan.sum(1) - row_target).sum() / row_target.sum()
    columns = np.abs(plan.sum(0) - column_target).sum() / column_target.sum()
    assert result.converged
    assert columns <= 1e-4 and rows <= 1e-4
    assert abs(columns - result.marginal_error) < 1e-6  # the reported error is the plan's own
    short = mm.ot.sinkhorn(x, y, epsilon=0.01, tau=1.0, tol=1e-4, max_iter=20, dtype="float64", mode=mode, device="cpu")
    assert not short.converged  # slow relaxed iterations are not mistaken for convergence


@pytest.mark.parametrize("mode", ["dense", "tiled"])
def test_unbalanced_plan_solves_the_documented_problem(mode):
    # First-order condition of <P, C> + ε KL(P | a⊗b) + τ KL(P1 | a) + τ KL(Pᵀ1 | b):
    # C + ε log(P / a⊗b) + τ log(P1 / a) + τ log(Pᵀ1 / b) = 0 (the entropy relative to a⊗b, not to 1: with the
    # latter the transported mass depended on the number of points).
    x, y = clouds(70, 40, 5, 4)
    epsilon, tau = 0.05, 0.5
    result = mm.ot.sinkhorn(
        x, y, epsilon=epsilon, tau=tau, tol=1e-10, max_iter=100_000, dtype="float64", mode=mode, device="cpu"
    )
    plan = full_plan(x, y, result)
    a, b = np.full(70, 1 / 70), np.full(40, 1 / 40)
    gradient = (
        matchclot_cost(x, y)
        + epsilon * np.log(plan / np.outer(a, b))
        + tau * np.log(plan.sum(1) / a)[:, None]
        + tau * np.log(plan.sum(0) / b)[None]
    )
    assert np.abs(gradient).max() < 1e-6


def test_inputs_that_require_grad_are_accepted():
    x, y = (torch.tensor(values, requires_grad=True) for values in clouds(20, 15, 3, 1))
    assert mm.ot.sinkhorn(x, y, device="cpu").converged
    assert mm.ot.mutual_knn(x, y, n_neighbors=3).plan.shape == (20, 15)
    assert mm.ot.exact_matching(x, y).plan.nnz == 15


def test_custom_marginals():
    x, y = clouds(30, 20, 4, 5)
    a = np.linspace(1, 2, 30)
    a /= a.sum()
    result = mm.ot.sinkhorn(x, y, a=a, tol=1e-6, dtype="float64", max_iter=5000, device="cpu")
    np.testing.assert_allclose(full_plan(x, y, result).sum(1), a, atol=1e-6)


def test_result_diagnostics():
    x, y = clouds(30, 30, 4, 0)
    result = mm.ot.sinkhorn(x, y, device="cpu")
    diagnostics = result.diagnostics()
    assert diagnostics["n_iter"] == result.n_iter >= 1
    assert diagnostics["marginal_error"] <= 1e-3
    assert diagnostics["time_s"] > 0
    assert result.f.shape == (30,) and result.f.dtype == np.float64
    assert set(result.cost) == {"kind", "offset", "scale"}


def test_accepts_torch_tensors():
    x, y = clouds(20, 20, 4, 0)
    result = mm.ot.sinkhorn(torch.as_tensor(x), torch.as_tensor(y, dtype=torch.float32), device="cpu")
    assert result.converged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"tol": 0}, "tol"),
        ({"tau": -1.0}, "tau"),
        ({"max_iter": 0}, "max_iter"),
        ({"cost": "l1"}, "cost"),
        ({"mode": "sparse"}, "mode"),
        ({"dtype": "float16"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"a": np.ones(3)}, "'a'"),
        ({"b": np.full(10, 0.2)}, "'b'"),
        ({"memory_budget": 0}, "memory_budget"),
        ({"memory_budget": -5}, "memory_budget"),
        ({"memory_budget": "2GB"}, "memory_budget"),
        ({"memory_budget": True}, "memory_budget"),
        ({"memory_budget": float("inf")}, "memory_budget"),
    ],
)
def test_bad_arguments(kwargs, message):
    x, y = clouds(10, 10, 3, 0)
    with pytest.raises(ValueError, match=message):
        mm.ot.sinkhorn(x, y, **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_points(bad):
    x, y = clouds(10, 10, 3, 0)
    x_bad = x.copy()
    x_bad[3, 1] = bad
    with pytest.raises(ValueError, match="'x' contains NaN or infinite"):
        mm.ot.sinkhorn(x_bad, y)
    with pytest.raises(ValueError, match="'y' contains NaN or infinite"):
        mm.ot.sinkhorn(y, x_bad)


def test_width_mismatch_and_shapes():
    x, y = clouds(10, 10, 3, 0)
    with pytest.raises(ValueError, match="same number of dimensions"):
        mm.ot.sinkhorn(x, y[:, :2])
    with pytest.raises(ValueError, match="2-d"):
        mm.ot.sinkhorn(x[0], y)
    with pytest.raises(ValueError, match="no points"):
        mm.ot.sinkhorn(x[:0], y)


def test_cuda_when_missing_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    x, y = clouds(10, 10, 3, 0)
    with pytest.raises(ValueError, match="CUDA"):
        mm.ot.sinkhorn(x, y, device="cuda")


@pytest.mark.parametrize("mode", ["dense", "tiled"])
def test_anderson_acceleration_needs_fewer_iterations_than_plain_sinkhorn(monkeypatch, mode):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 16))
    y = x + 2.5 * rng.normal(size=x.shape)  # a diffuse plan, on which plain Sinkhorn converges slowly
    kwargs = {"epsilon": 0.01, "tol": 1e-3, "max_iter": 2000, "mode": mode, "memory_budget": 600 * 64 * 4}
    accelerated = mm.ot.sinkhorn(x, y, device="cpu", **kwargs)
    monkeypatch.setattr(sinkhorn_module, "ANDERSON_DEPTH", 0)
    plain = mm.ot.sinkhorn(x, y, device="cpu", **kwargs)
    assert accelerated.converged and plain.converged
    assert accelerated.n_iter < 0.75 * plain.n_iter
    # Both are as close to the converged plan as their tolerance allows, and pick the same partners.
    converged = {**kwargs, "tol": 1e-9, "mode": "dense", "dtype": "float64"}
    reference = full_plan(x, y, mm.ot.sinkhorn(x, y, device="cpu", **converged))
    for result in (accelerated, plain):
        plan = full_plan(x, y, result)
        assert np.abs(plan - reference).sum() < 3e-3
        assert (plan.argmax(axis=1) == reference.argmax(axis=1)).mean() > 0.99


def test_anderson_mixer_solves_a_linear_fixed_point_and_survives_non_finite_steps():
    rng = np.random.default_rng(1)
    # x <- A x + c with a contraction A of spectral radius 0.95: plain iteration gains ~5 % per step.
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    a = torch.as_tensor(q @ np.diag(np.linspace(0.1, 0.95, 20)) @ q.T)
    c = torch.as_tensor(rng.normal(size=20))
    solution = torch.linalg.solve(torch.eye(20, dtype=a.dtype) - a, c)
    errors = {}
    for depth in (0, 4):
        mixer = sinkhorn_module._AndersonMixer(depth=depth)
        x = torch.zeros(20, dtype=a.dtype)
        for _ in range(40):
            x = mixer.next(x, a @ x + c)
        errors[depth] = float(torch.linalg.norm(x - solution) / torch.linalg.norm(solution))
    assert errors[4] < 1e-3 and errors[4] < errors[0] / 100
    # A non-finite combination falls back to the plain image and clears the history.
    image = torch.full((20,), float("nan"), dtype=a.dtype)
    assert torch.isnan(mixer.next(x, image)).all() and mixer.iterates == []


def test_shift_invariant_mixer_leaves_the_common_constant_to_the_plain_step():
    # F(x) = x + r(x) with r blind to a common constant, as Sinkhorn's column update: r depends on x - mean(x).
    rng = np.random.default_rng(2)
    target = torch.as_tensor(rng.normal(size=6))

    def image(x):
        centred = x - x.mean()
        return x + 0.3 * (target - target.mean() - centred) + 0.01  # the plain step also drifts by 0.01

    mixer = sinkhorn_module._AndersonMixer(depth=3, shift_invariant=True)
    x = torch.zeros(6, dtype=torch.float64)
    accelerated = []
    for _ in range(8):  # converged after the first accelerated step, then at the rounding level
        plain = image(x)
        mixed = mixer.next(x, plain)
        assert float((mixed - x).mean()) == pytest.approx(float((plain - x).mean()), abs=1e-12)
        accelerated.append(mixer.accelerated)
        x = mixed
    assert accelerated[1]
    # At the rounding level the residuals' changes are noise: plain steps, which stay converged (a least squares on
    # that noise extrapolated by ~1e-3, depending on the BLAS threads' summation order).
    assert not any(accelerated[3:])
    np.testing.assert_allclose((x - x.mean()).numpy(), (target - target.mean()).numpy(), atol=1e-12)


@pytest.mark.parametrize("mode", ["dense", "tiled"])
@pytest.mark.parametrize(
    ("n_rows", "n_cols", "dim", "seed", "epsilon", "cost"),
    # Found by the property test above: Anderson steps that overshot (3 × 2: the potentials drifted to ±1.5e4 and
    # the solve never converged; 2 × 7: converged in float32 but 1.2e-3 off when recomputed in float64), and a slow
    # near-discrete solve at the pipeline's epsilon.
    [(3, 2, 2, 0, 0.01, "cosine"), (2, 7, 2, 0, 0.003, "cosine"), (33, 31, 10, 4651, 0.001, "sqeuclidean")],
)
def test_accelerated_solves_that_once_failed_converge(mode, n_rows, n_cols, dim, seed, epsilon, cost):
    x, y = clouds(n_rows, n_cols, dim, seed)
    result = mm.ot.sinkhorn(x, y, epsilon=epsilon, cost=cost, tol=1e-3, max_iter=5000, mode=mode, device="cpu")
    plan = full_plan(x, y, result)
    error = np.abs(plan.sum(1) - 1 / n_rows).sum() + np.abs(plan.sum(0) - 1 / n_cols).sum()
    assert result.converged and error <= 1e-3 + 1e-4
    assert np.abs(result.f).max() < 10 and np.abs(result.g).max() < 10  # the [0, 1] cost keeps them of order 1


@pytest.mark.parametrize("mode", ["dense", "tiled"])
@pytest.mark.parametrize("max_iter", [1, 2, 3, 5])
@pytest.mark.parametrize("epsilon_start", [None, 0.05])
def test_a_solve_cut_short_returns_potentials_of_the_final_epsilon_and_their_error(mode, max_iter, epsilon_start):
    # The tiled solver once returned g one update past the f of its last row pass, and the potentials of an
    # intermediate stage (converged=True at tol >= STAGE_TOL) when max_iter ran out before the final stage.
    for seed in range(3):
        x, y = clouds(12, 9, 3, seed)
        result = mm.ot.sinkhorn(
            x, y, epsilon=1e-3, tol=0.05, max_iter=max_iter, epsilon_start=epsilon_start, mode=mode,
            dtype="float64", device="cpu",
        )  # fmt: skip
        plan = full_plan(x, y, result)
        error = np.abs(plan.sum(1) - 1 / 12).sum() + np.abs(plan.sum(0) - 1 / 9).sum()
        assert result.n_iter <= max_iter and np.isfinite(result.f).all() and np.isfinite(result.g).all()
        assert error == pytest.approx(result.marginal_error, abs=1e-9)
        assert result.converged == (error <= 0.05 + 1e-9)


def _reviewer_problem(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Problem ``index`` of a reviewer's stress run (replays its generator's draws)."""
    rng = np.random.default_rng(12345)
    for _ in range(index + 1):
        n, m = rng.integers(3, 200, size=2)
        d = int(rng.integers(2, 12))
        kind = rng.choice(["gauss", "clusters", "paired"])
        x = rng.normal(size=(n, d))
        if kind == "clusters":
            centers = rng.normal(size=(4, d)) * 5
            x = centers[rng.integers(0, 4, n)] + 0.1 * rng.normal(size=(n, d))
            y = centers[rng.integers(0, 4, m)] + 0.1 * rng.normal(size=(m, d))
        elif kind == "paired":
            y = x + 0.2 * rng.normal(size=x.shape)
        else:
            y = rng.normal(size=(m, d)) + 0.5
        rng.choice(["cosine", "sqeuclidean"]), rng.choice(["dense", "tiled"]), rng.choice(["float32", "float64"])
        rng.uniform(-3, -1), rng.integers(0, 3), rng.random()
        marginals = rng.random() < 0.3
        rng.choice([1000, 7])
        if marginals:
            rng.random(x.shape[0]), rng.random(y.shape[0])
    return x, y


def test_a_dense_solve_cut_short_returns_its_best_iterate():
    # Cut by max_iter=3 right after an Anderson step that raised the error (before its retraction), the dense solver
    # returned that step: L1 error 1.05 where the previous iterate had 0.067. Iterates do not depend on max_iter, so
    # the returned error can only fall as max_iter grows.
    x, y = _reviewer_problem(230)
    assert x.shape == (171, 7) and y.shape == (179, 7)
    errors = []
    for max_iter in range(1, 9):
        result = mm.ot.sinkhorn(
            x, y, epsilon=0.008659455583934137, cost="sqeuclidean", max_iter=max_iter, mode="dense", dtype="float64",
            device="cpu",
        )  # fmt: skip
        plan = full_plan(x, y, result)
        error = np.abs(plan.sum(1) - 1 / 171).sum() + np.abs(plan.sum(0) - 1 / 179).sum()
        assert error == pytest.approx(result.marginal_error, abs=1e-9)
        errors.append(result.marginal_error)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:], strict=False))
    assert max(errors) < 0.1


def test_tiled_solver_keeps_the_accelerated_step_that_resolves_an_underflowed_column():
    # 1 x 2 in float32: the plain step overshoots a column whose sum underflowed (it oscillates forever); an
    # Anderson step larger than the absorption bound but within the plain step's reach resolves it.
    x, y = np.zeros((1, 1)), np.array([[0.0], [2.18194961]])
    result = mm.ot.sinkhorn(
        x, y, epsilon=1e-3, cost="sqeuclidean", tol=0.01, max_iter=5000, epsilon_start=0.004, mode="tiled",
        device="cpu",
    )  # fmt: skip
    assert result.converged and result.n_iter < 100


@pytest.mark.parametrize("threads", [1, 2])
def test_large_cpu_arrays_are_populated_mappings_on_one_thread(monkeypatch, threads):
    from mumatch.ot import _cost

    mappings = []
    real_mmap = _cost.mmap.mmap
    monkeypatch.setattr(_cost.mmap, "mmap", lambda *args, **kw: mappings.append(kw) or real_mmap(*args, **kw))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        size = _cost.POPULATE_BYTES // 4 + 1
        array = _cost.empty_array((size,), torch.float32, torch.device("cpu"))
    finally:
        torch.set_num_threads(previous)
    array.fill_(2.0)  # writable, and alive after the helper's local mapping went out of scope
    assert array.shape == (size,) and array.dtype == torch.float32 and float(array.sum()) == 2.0 * size
    # One thread: populated in one system call. More: the writers' threads take the page faults in parallel.
    assert len(mappings) == (1 if threads == 1 else 0)
    if mappings:
        assert mappings[0]["flags"] & _cost.mmap.MAP_POPULATE
    small = _cost.empty_array((3, 4), torch.float64, torch.device("cpu"))
    assert small.shape == (3, 4) and small.dtype == torch.float64


@pytest.mark.parametrize("mode", ["dense", "tiled"])
@pytest.mark.parametrize("shape", [(1, 1), (4, 3)])
def test_coinciding_points_give_a_uniform_plan_not_amplified_rounding(mode, shape):
    # Every squared distance is rounding noise of |x|² + |y|² - 2<x, y> (~1e-15 for this point in float64): dividing
    # by the largest one scaled that noise up to the whole cost, and the plan summed to ~1e12 (found by a stress run).
    point = np.array(
        [[0.7338715295248737, 1.7838984749839797, -1.2891196188504346, -0.9752345841990221, -0.12333733112118601]]
    )
    x, y = np.repeat(point, shape[0], axis=0), np.repeat(point, shape[1], axis=0)
    result = mm.ot.sinkhorn(x, y, cost="sqeuclidean", mode=mode, dtype="float64", device="cpu")
    plan = full_plan(x, y, result)
    assert result.converged and result.cost["scale"] == 2.0
    np.testing.assert_allclose(plan, np.full(shape, 1.0 / (shape[0] * shape[1])), rtol=1e-5)


@pytest.mark.parametrize("collinear", [False, True])
def test_anderson_least_squares_off_the_cpu_matches_lapack(collinear):
    # CUDA's lstsq lacks the rank-revealing driver: off the CPU the system is reduced by QR first. Same minimiser,
    # with LAPACK's rank cutoff for the tall system (an exact copy of a column would not tell the cutoffs apart).
    rng = np.random.default_rng(0)
    differences = torch.as_tensor(rng.normal(size=(100_000, 4)))
    if collinear:  # Anderson's residual differences often nearly are
        differences[:, 3] = differences[:, 1] + 1e-12 * torch.as_tensor(rng.normal(size=100_000))
    residual = torch.as_tensor(rng.normal(size=(100_000, 1)))
    lapack = torch.linalg.lstsq(differences, residual, driver="gelsy").solution
    reduced = sinkhorn_module._least_squares_after_qr(differences, residual)

    def misfit(gamma):
        return torch.linalg.norm(residual - differences @ gamma)

    if not collinear:
        np.testing.assert_allclose(misfit(reduced), misfit(lapack), rtol=1e-10)
        np.testing.assert_allclose(reduced, lapack, atol=1e-8)
        return
    # Collinear: the least misfit is that of the three independent columns, whatever column a rank-revealing QR
    # drops. (LAPACK's own answer is not the reference here: in one run of the suite, with other tests' threads
    # around it, gelsy's pivoting made another rank decision and missed the minimum by 1e-5 relative.)
    independent = torch.linalg.lstsq(differences[:, :3], residual).solution
    least = torch.linalg.norm(residual - differences[:, :3] @ independent)
    np.testing.assert_allclose(misfit(reduced), least, rtol=1e-10)
    np.testing.assert_allclose(float(reduced[1] + reduced[3]), float(independent[1]), atol=1e-8)
    np.testing.assert_allclose(reduced[[0, 2]], independent[[0, 2]], atol=1e-8)
    assert float(reduced.abs().max()) < 10  # no extrapolation along the near-null direction


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["dense", "tiled"])
def test_cuda_solve_and_plan_agree_with_cpu(mode):
    x, y = clouds(900, 2500, 8, 0)
    kwargs = {"epsilon": 0.01, "mode": mode, "memory_budget": 300 * 2500 * 4}
    on_cpu = mm.ot.sinkhorn(x, y, device="cpu", **kwargs)
    on_gpu = mm.ot.sinkhorn(x, y, device="cuda", **kwargs)
    assert on_gpu.converged and on_gpu.marginal_error <= 1e-3
    np.testing.assert_array_equal(full_plan(x, y, on_gpu).argmax(1), full_plan(x, y, on_cpu).argmax(1))
    plans = [
        mm.ot.sparsify_plan(x, y, result.f, result.g, result.epsilon, result.cost, device=device, memory_budget=2**22)
        for result, device in ((on_cpu, "cpu"), (on_gpu, "cuda"))
    ]
    np.testing.assert_array_equal(plans[1].plan.argmax(axis=1), plans[0].plan.argmax(axis=1))


def test_layout_for_accelerators_gives_the_same_solve_and_plan(monkeypatch):
    # On a GPU, strips span whole rows and dense blocks are large (launch overhead); run that layout on the CPU,
    # with more columns than one CPU block (BLOCK_COLS) and a budget that makes several strips.
    from mumatch.ot import _plan as plan_module

    x, y = clouds(600, 2500, 8, 5)
    budget = 150 * 2500 * 4
    kwargs = {"epsilon": 0.01, "device": "cpu", "memory_budget": budget}
    default = mm.ot.sinkhorn(x, y, mode="tiled", **kwargs)
    default_plan = mm.ot.sparsify_plan(
        x, y, default.f, default.g, default.epsilon, default.cost, device="cpu", memory_budget=budget
    )
    accelerator = torch.device("cuda")
    # Whole rows, as many as the budget allows beside the other buffers, never more than there are.
    assert cost_module.strip_layout((600, 2500), 4, budget, accelerator) == (150, 2500)
    assert cost_module.strip_layout((600, 2500), 4, budget, accelerator, 4, extra_row_bytes=32 * 1000) == (20, 2500)
    assert cost_module.strip_layout((100, 2500), 4, 2**30, accelerator) == (100, 2500)
    assert cost_module.strip_layout((600, 2500), 4, budget, torch.device("cpu"))[1] == cost_module.BLOCK_COLS
    assert cost_module.dense_block_rows(650, 4, accelerator) == cost_module.ACCELERATOR_BLOCK_BYTES // (650 * 4)

    layout = cost_module.strip_layout

    def whole_rows(shape, itemsize, memory_budget, device, n_buffers=1, extra_row_bytes=0):
        return layout(shape, itemsize, memory_budget, accelerator, n_buffers, extra_row_bytes)

    for module in (cost_module, sinkhorn_module, plan_module):
        monkeypatch.setattr(module, "strip_layout", whole_rows)
    big_blocks = mm.ot.sinkhorn(x, y, mode="tiled", **kwargs)
    plan = mm.ot.sparsify_plan(
        x, y, big_blocks.f, big_blocks.g, big_blocks.epsilon, big_blocks.cost, device="cpu", memory_budget=budget
    )
    assert big_blocks.n_iter == default.n_iter
    np.testing.assert_allclose(big_blocks.f, default.f, atol=1e-5)
    # Rounding can move an entry of ~1e-4 across the 99.9 % mass cut of a row; nothing else differs.
    np.testing.assert_allclose(plan.plan.toarray(), default_plan.plan.toarray(), atol=2e-4)
    np.testing.assert_array_equal(plan.plan.argmax(axis=1), default_plan.plan.argmax(axis=1))

    results = []
    for rows in (50, cost_module.dense_block_rows(2500, 4, accelerator)):  # 12 blocks; one
        for module in (cost_module, sinkhorn_module):
            monkeypatch.setattr(module, "dense_block_rows", lambda n_cols, itemsize, device, rows=rows: rows)
        results.append(mm.ot.sinkhorn(x, y, mode="dense", **kwargs))
    default, big_blocks = results
    assert big_blocks.n_iter == default.n_iter
    np.testing.assert_allclose(big_blocks.f, default.f, atol=1e-5)


@pytest.mark.parametrize("seed", [14, 23, 27, 42, 49, 56, 57, 69, 77, 79])
def test_tiled_unbalanced_float32_survives_columns_whose_sums_underflow(seed):
    # Small tau, a new epsilon stage: a column's plan entries underflowed in float32, its sum was clamped to 1e-300,
    # g jumped by -eps log 1e-300, and the next row scale overflowed (FloatingPointError in 42 of 300 such problems).
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 20, 2)
    x, y = rng.standard_normal((n, 5)), rng.standard_normal((m, 5))
    kwargs = {"epsilon": 1e-3, "epsilon_start": 0.016, "cost": "sqeuclidean", "mode": "tiled", "tau": 0.01}
    single = mm.ot.sinkhorn(x, y, device="cpu", max_iter=2000, **kwargs)
    double = mm.ot.sinkhorn(x, y, device="cpu", max_iter=2000, dtype="float64", **kwargs)
    assert single.converged and np.isfinite(single.f).all() and np.isfinite(single.g).all()
    assert abs(single.n_iter - double.n_iter) <= 5
    np.testing.assert_allclose(full_plan(x, y, single), full_plan(x, y, double), atol=2e-3 / (n * m) + 1e-6)


def test_log_column_sums_recomputes_the_columns_a_pass_underflowed():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((20, 4))
    geometry = cost_module.prepare_cost(x, y, "sqeuclidean", dtype=torch.float32, device=torch.device("cpu"))
    log_uniform = torch.full((30,), -np.log(30.0)), torch.full((20,), -np.log(20.0))
    solver = sinkhorn_module._TiledSolver(geometry, *log_uniform, None, 2**20)
    f = torch.as_tensor(rng.normal(scale=0.01, size=30), dtype=torch.float32)
    g = torch.as_tensor(rng.normal(scale=0.01, size=20), dtype=torch.float32)
    epsilon = 0.002
    cost = -(geometry.neg_cost_tile(0, 30).double())
    exact = torch.logsumexp((f.double()[:, None] + g.double()[None, :] - cost) / epsilon, dim=0)
    column_sums = exact.exp()
    column_sums[[3, 11]] = torch.tensor([0.0, 1e-40], dtype=torch.float64)  # what an underflowed pass gives
    log_sums = solver.log_column_sums(column_sums, f, g, epsilon)
    torch.testing.assert_close(log_sums, exact, rtol=1e-6, atol=1e-4)
    # Reliable sums are only logged, not recomputed.
    assert torch.equal(log_sums[[0, 5]], column_sums[[0, 5]].log())


def test_unbalanced_plan_of_almost_no_mass_in_float32():
    # tau = 1e-3 on the cosine cost: the relaxed plan keeps ~1e-55 of the mass, below float32's range. Tiled: every
    # column sum underflows; their recomputed sums now also give the error (it stayed 1.0 for 2,000 iterations).
    rng = np.random.default_rng(0)
    n, m = rng.integers(1, 40, 2)
    x, y = rng.standard_normal((n, 5)), rng.standard_normal((m, 5))
    kwargs = {"epsilon": 1e-3, "epsilon_start": 0.05, "cost": "cosine", "tau": 1e-3, "device": "cpu", "max_iter": 2000}
    tiled = mm.ot.sinkhorn(x, y, mode="tiled", **kwargs)
    reference = mm.ot.sinkhorn(x, y, mode="tiled", dtype="float64", **kwargs)
    assert tiled.converged and tiled.n_iter < 40
    np.testing.assert_allclose(tiled.f, reference.f, atol=1e-4)
    np.testing.assert_allclose(tiled.g, reference.g, atol=1e-4)
    # The dense float32 kernel cannot hold such a plan: asked for, a clear error that names the way out; chosen by
    # mode='auto', the plan is solved again without it, with a warning.
    with pytest.raises(FloatingPointError, match="pass dtype='float64'"):
        mm.ot.sinkhorn(x, y, mode="dense", **kwargs)
    from mumatch.ot import _sinkhorn

    dense_iterations = []
    dense_run = _sinkhorn._DenseSolver.run

    def counted(self, *args, **kw):
        state = dense_run(self, *args, **kw)
        dense_iterations.append(state[2])
        return state

    _sinkhorn._DenseSolver.run = counted
    try:
        with pytest.warns(RuntimeWarning, match="solved again without storing it"):
            auto = mm.ot.sinkhorn(x, y, **kwargs)
    finally:
        _sinkhorn._DenseSolver.run = dense_run
    assert auto.mode == "tiled" and auto.converged
    np.testing.assert_array_equal(auto.f, tiled.f)
    # Its counts cover both attempts, as its time does.
    assert auto.n_iter > tiled.n_iter and auto.n_rebuilds > tiled.n_rebuilds
    # The stored kernel gives up as soon as its potentials leave the range, not after max_iter (2,000) iterations.
    assert dense_iterations and max(dense_iterations) < 10


def test_a_retry_that_fails_too_raises(monkeypatch):
    from mumatch.ot import _sinkhorn

    modes = []

    def non_finite(solver, kernel, *args):
        modes.append(kernel is not None)
        n_rows, n_cols = solver.geometry.shape
        return torch.full((n_rows,), torch.nan), torch.zeros(n_cols), 1, 1.0, 0, 0

    monkeypatch.setattr(_sinkhorn, "_run_stages", non_finite)
    x, y = clouds(6, 5, 3, 0)
    with pytest.warns(RuntimeWarning, match="solved again"), pytest.raises(FloatingPointError, match="not finite"):
        mm.ot.sinkhorn(x, y, device="cpu")
    assert modes == [True, False]  # the stored kernel, then the tiled passes, once each
    with pytest.raises(FloatingPointError, match="not finite"):
        mm.ot.sinkhorn(x, y, device="cpu", mode="tiled")
    assert modes == [True, False, False]


def test_cuda_device_object_when_missing_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    x, y = clouds(10, 10, 3, 0)
    with pytest.raises(ValueError, match="no CUDA device"):
        mm.ot.sinkhorn(x, y, device=torch.device("cuda"))


@pytest.mark.parametrize("device", [torch.device("mps"), torch.device("meta"), "cuda:x", "cuda:-1"])
def test_other_device_types_and_malformed_indices_are_refused_by_name(monkeypatch, device):
    # With a GPU present, so that only the device's type or index can be what is refused.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    x, y = clouds(10, 10, 3, 0)
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        mm.ot.sinkhorn(x, y, device=device)


@pytest.mark.parametrize("device", ["cuda:1", torch.device("cuda", 1)])
def test_a_cuda_index_beyond_the_devices_is_refused(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    x, y = clouds(10, 10, 3, 0)
    with pytest.raises(ValueError, match=r"finds 1 CUDA device\(s\)"):
        mm.ot.sinkhorn(x, y, device=device)


@pytest.mark.parametrize("scale", [1e-22, 1e20])
def test_cosine_cost_ignores_the_scale_of_the_points(scale):
    # A float32 norm of coordinates ~1e20 overflows (~1e-22: underflows): every point became a zero vector, the cost
    # constant, and the solve "converged" on a uniform plan.
    x, y = clouds(20, 20, 3, 0, noise=0.01)
    reference = full_plan(x, y, mm.ot.sinkhorn(x, y, device="cpu"))
    scaled = mm.ot.sinkhorn(x * scale, y * scale, device="cpu")
    np.testing.assert_allclose(full_plan(x * scale, y * scale, scaled), reference, rtol=1e-3, atol=1e-6)
    exact = mm.ot.exact_matching(x * 1e160, y * 1e160).plan.toarray()
    np.testing.assert_array_equal(exact.argmax(1), reference.argmax(1))


def test_views_with_negative_strides_and_marginals_that_require_grad():
    x, y = clouds(15, 12, 4, 1)
    reversed_x = x[::-1]
    result = mm.ot.sinkhorn(reversed_x, np.flip(y, 1), device="cpu")
    expected = mm.ot.sinkhorn(reversed_x.copy(), np.flip(y, 1).copy(), device="cpu")
    np.testing.assert_array_equal(result.f, expected.f)
    a = torch.full((15,), 1 / 15, dtype=torch.float64, requires_grad=True)
    assert mm.ot.sinkhorn(x, y, a=a, device="cpu").converged


def test_points_without_dimensions_are_refused():
    with pytest.raises(ValueError, match="'x' has no dimensions"):
        mm.ot.sinkhorn(np.zeros((5, 0)), np.zeros((4, 0)), cost="sqeuclidean")


def test_small_tau_in_float32_reports_a_finite_error():
    # (g - ε log b) / τ leaves float32's range at τ = 1e-7: the relaxed target overflowed and the error was NaN.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(25, 3))
    result = mm.ot.sinkhorn(x, y, cost="sqeuclidean", tau=1e-7, max_iter=50, device="cpu")
    assert np.isfinite(result.marginal_error)
    assert mm.ot.sinkhorn(x, y, cost="sqeuclidean", tau=1e-7, dtype="float64", device="cpu").converged


def test_epsilon_schedule_divides_by_four_and_drops_stages_within_one_and_a_half_epsilon():
    schedule = sinkhorn_module.epsilon_schedule
    # The default start is the cost range / 50; a start below 1.5 × epsilon is no stage of its own.
    assert schedule(0.01, 0.7, torch.float32, None) == [0.01]
    assert schedule(0.001, 1.0, torch.float32, None) == pytest.approx([0.02, 0.005, 0.001])
    assert schedule(0.01, 1.0, torch.float32, 0.16) == pytest.approx([0.16, 0.04, 0.01])
    assert schedule(0.01, 1.0, torch.float32, 0.0149) == [0.01]


def test_no_epsilon_scaling_at_matchclots_epsilon():
    # The rescaled cosine cost spans at most 2/3 (its minimum is 1 / (max - min + 1) ≥ 1/3): at epsilon 0.01 the
    # kernel's exponents stay below 50 and the solve runs a single stage, as the docstring promises.
    x, y = clouds(30, 30, 4, seed=0)
    result = mm.ot.sinkhorn(x, y, epsilon=0.01)
    assert result.epsilon_schedule == [0.01] and result.converged


@pytest.mark.parametrize(
    ("mode", "push", "slack"),
    # Dense iterates on log v, tiled on g (ε = 0.01). A push within reach is evaluated and retracted (one wasted
    # evaluation per bad step); one beyond the absorption bound (dense: |log v| > 30 in float32; tiled: beyond both
    # 30 ε and the plain step) is not trusted at all, and the solve is the plain one.
    [("dense", 3.0, 2.0), ("tiled", 0.03, 2.0), ("dense", 1000.0, 1.0), ("tiled", 10.0, 1.0)],
)
def test_an_accelerated_step_that_raises_the_error_is_replaced_by_the_plain_step(monkeypatch, mode, push, slack):
    # A mixer whose every combination is bad (the plain image pushed off on half the columns): the solver must take
    # the plain step it stood for, so that the solve progresses as plain Sinkhorn does, not from the bad iterates.
    class BadMixer(sinkhorn_module._AndersonMixer):
        def next(self, iterate, image):
            plain = super().next(iterate, image)
            if not self.accelerated:
                return plain
            offset = torch.zeros_like(image)
            offset[: image.numel() // 2] = push
            return image + offset

    x, y = clouds(60, 60, 6, 0)
    kwargs = {"epsilon": 0.01, "tol": 1e-3, "max_iter": 3000, "mode": mode, "device": "cpu"}
    monkeypatch.setattr(sinkhorn_module, "ANDERSON_DEPTH", 0)
    plain = mm.ot.sinkhorn(x, y, **kwargs)
    monkeypatch.setattr(sinkhorn_module, "ANDERSON_DEPTH", 4)
    monkeypatch.setattr(sinkhorn_module, "_AndersonMixer", BadMixer)
    sabotaged = mm.ot.sinkhorn(x, y, **kwargs)
    assert plain.converged and sabotaged.converged
    assert sabotaged.n_iter <= slack * plain.n_iter + 5
    np.testing.assert_allclose(full_plan(x, y, sabotaged), full_plan(x, y, plain), atol=2e-3 / 60)
