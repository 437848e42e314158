"""Count likelihoods of the decoders: negative binomial and library-aware Bernoulli (no AnnData here).

Library size is handled as in scvi-tools with ``use_observed_lib_size=True``: the decoder outputs a distribution over
features (a softmax, ``px_scale``), and the mean count of feature ``g`` in cell ``n`` is ``px_scale[n, g] *
library[n]`` with ``library`` the cell's observed total count. Only the composition is learned; sequencing depth is
taken from the data.
"""

from __future__ import annotations

from typing import Literal

import torch

Likelihood = Literal["nb", "bernoulli"]
LIKELIHOODS: tuple[str, ...] = ("nb", "bernoulli")
# Smallest probability of a non-zero peak; keeps log(1 - exp(-rate)) finite when the expected count underflows.
MIN_PROBABILITY = 1e-8
# Keeps the logarithms of the negative binomial finite at zero mean, as in scvi-tools.
NB_EPS = 1e-8


def negative_binomial_log_likelihood(
    counts: torch.Tensor, px_scale: torch.Tensor, library: torch.Tensor, log_theta: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of counts under a negative binomial with mean ``px_scale * library``.

    Parameters
    ----------
    counts
        Raw counts, ``(n_cells, n_features)``.
    px_scale
        Expected fraction of the cell's counts in every feature (rows sum to 1), ``(n_cells, n_features)``.
    library
        Observed total counts of every cell, ``(n_cells, 1)``.
    log_theta
        Log inverse dispersion of every feature, ``(n_features,)`` (broadcast over cells).

    Returns
    -------
    The log-likelihood of every cell summed over features, ``(n_cells,)``.
    """
    # scvi-tools' log_nb_positive, written out so that the terms of theta alone are computed once per feature rather
    # than broadcast to every cell (forward + backward of a 128 × 1000 minibatch: 9.0 → 5.9 ms, one thread).
    mean = px_scale * library
    theta = log_theta.exp()
    log_theta_mean = torch.log(theta + mean + NB_EPS)
    per_cell = (
        counts * (torch.log(mean + NB_EPS) - log_theta_mean)
        - theta * log_theta_mean
        + torch.lgamma(counts + theta)
        - torch.lgamma(counts + 1.0)
    ).sum(-1)
    return per_cell + (theta * torch.log(theta + NB_EPS) - torch.lgamma(theta)).sum()


def bernoulli_log_likelihood(counts: torch.Tensor, px_scale: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of binarised counts (accessible or not) given a Poisson rate ``px_scale * library``.

    A peak is seen open when at least one fragment falls in it: with ``rate = px_scale * library`` fragments expected,
    ``P(open) = 1 - exp(-rate)``. The library size enters as for the negative binomial, so deeper cells open more
    peaks without the decoder having to learn it.

    Parameters
    ----------
    counts
        Raw counts, ``(n_cells, n_features)``; any count > 0 is an open peak.
    px_scale
        Expected fraction of the cell's fragments in every peak (rows sum to 1).
    library
        Observed total counts of every cell, ``(n_cells, 1)``.

    Returns
    -------
    The log-likelihood of every cell summed over features, ``(n_cells,)``.
    """
    rate = px_scale * library
    log_open = torch.log((-torch.expm1(-rate)).clamp_min(MIN_PROBABILITY))
    return torch.where(counts > 0, log_open, -rate).sum(-1)


def count_log_likelihood(
    likelihood: Likelihood,
    counts: torch.Tensor,
    px_scale: torch.Tensor,
    library: torch.Tensor,
    log_theta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch to :func:`negative_binomial_log_likelihood` (``"nb"``) or :func:`bernoulli_log_likelihood`."""
    if likelihood == "nb":
        if log_theta is None:
            raise ValueError("likelihood='nb' needs log_theta, the log inverse dispersion of every feature")
        return negative_binomial_log_likelihood(counts, px_scale, library, log_theta)
    if likelihood == "bernoulli":
        return bernoulli_log_likelihood(counts, px_scale, library)
    raise ValueError(f"likelihood={likelihood!r} is not supported; choose one of {list(LIKELIHOODS)}")
