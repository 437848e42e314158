"""Adversarial modality discriminator trained through a gradient reversal layer (no AnnData here)."""

from __future__ import annotations

import torch
from scvi.nn import FCLayers
from torch import nn


class _GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-scale`` backward (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        ctx.scale = scale
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return -ctx.scale * grad_output, None


def reverse_gradient(inputs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Pass ``inputs`` unchanged forward and reverse (and scale) their gradient backward.

    One optimiser then trains both players: the discriminator descends its classification loss while everything
    upstream of the reversal ascends it, which is the min-max game of an adversarial discriminator.
    """
    return _GradientReversal.apply(inputs, scale)


class ModalityDiscriminator(nn.Module):
    """MLP classifying which modality's encoder produced an embedding.

    Parameters
    ----------
    n_input
        Width of the embeddings.
    n_classes
        Number of modalities.
    n_hidden
        Width of the hidden layers.
    n_layers
        Number of hidden layers.
    dropout
        Dropout rate of the hidden layers.
    """

    def __init__(self, n_input: int, n_classes: int, *, n_hidden: int = 128, n_layers: int = 2, dropout: float = 0.2):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a modality discriminator needs n_classes >= 2, got {n_classes}")
        self.hidden = FCLayers(
            n_input,
            n_hidden,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout,
            use_batch_norm=False,
            activation_fn=nn.LeakyReLU,
        )
        self.classify = nn.Linear(n_hidden, n_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Class logits, ``(n_cells, n_classes)``."""
        return self.classify(self.hidden(embedding))

    def adversarial_loss(self, embedding: torch.Tensor, modality: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Cross-entropy of the modality labels, with the gradient to ``embedding`` reversed and scaled.

        Minimising the returned value trains the discriminator to tell modalities apart and the encoders (upstream of
        ``embedding``) to make them indistinguishable.
        """
        logits = self(reverse_gradient(embedding, scale))
        return nn.functional.cross_entropy(logits, modality)
