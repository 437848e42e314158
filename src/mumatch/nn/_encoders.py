"""Multilayer perceptron encoders (tensors in, tensors out)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLPEncoder(nn.Module):
    """Linear → ELU → dropout for each hidden layer, then a linear projection to ``n_output``.

    The layout of MatchCLOT's encoder (ELU activations, one dropout rate per hidden layer, a linear output).

    Parameters
    ----------
    n_input
        Width of the input.
    n_output
        Width of the output.
    n_hidden
        Width of each hidden layer (empty: a single linear map).
    dropout
        Dropout rate after each hidden layer: one value for all, or one per layer.
    """

    def __init__(self, n_input: int, n_output: int, n_hidden: Sequence[int], dropout: float | Sequence[float] = 0.0):
        super().__init__()
        widths = [int(width) for width in n_hidden]
        rates = [float(dropout)] * len(widths) if isinstance(dropout, int | float) else [float(r) for r in dropout]
        if len(rates) != len(widths):
            raise ValueError(f"dropout has {len(rates)} rates for {len(widths)} hidden layers; give one per layer")
        layers: list[nn.Module] = []
        n_in = n_input
        for width, rate in zip(widths, rates, strict=True):
            layers += [nn.Linear(n_in, width), nn.ELU(), nn.Dropout(rate)]
            n_in = width
        layers.append(nn.Linear(n_in, n_output))
        self.network = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a (cells × n_input) tensor into (cells × n_output)."""
        return self.network(x)
