from __future__ import annotations

import numpy as np

from mumatch._ensemble import concatenate_members


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_cosine_of_the_concatenation_is_the_mean_of_the_members():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(5, dim)) * scale for dim, scale in ((3, 1.0), (7, 10.0), (4, 0.1))]
    ys = [rng.normal(size=(6, x.shape[1])) for x in xs]
    combined_x, combined_y = concatenate_members(xs), concatenate_members(ys)
    assert combined_x.shape == (5, 14) and combined_x.dtype == np.float64
    mean_cosine = np.mean([cosine(x, y) for x, y in zip(xs, ys, strict=True)], axis=0)
    np.testing.assert_allclose(combined_x @ combined_y.T, mean_cosine)
    np.testing.assert_allclose(np.linalg.norm(combined_x, axis=1), 1.0)


def test_without_normalising_squared_distances_average_and_dtype_is_kept():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(2)]
    ys = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(2)]
    combined_x = concatenate_members(xs, normalise=False)
    combined_y = concatenate_members(ys, normalise=False)
    assert combined_x.dtype == np.float32
    distance = ((combined_x[:, None] - combined_y[None]) ** 2).sum(-1)
    members = [((x[:, None] - y[None]) ** 2).sum(-1) for x, y in zip(xs, ys, strict=True)]
    np.testing.assert_allclose(distance, np.mean(members, axis=0), rtol=1e-5)
    # A zero vector (a cell with no signal) stays zero instead of becoming NaN.
    assert np.isfinite(concatenate_members([np.zeros((2, 3))])).all()
