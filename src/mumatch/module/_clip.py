"""The CLIP module: one MLP encoder per modality, L2-normalised outputs and a symmetric InfoNCE loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scvi.module.base import LossOutput
from torch import nn

from ..nn import MLPEncoder

# CLIP (Radford et al. 2021) clips its learnable logit scale at 100 so that training cannot blow up the logits.
MAX_LOG_TEMPERATURE = math.log(100.0)


class CLIPModule(nn.Module):
    """Two encoders trained so that the embeddings of a paired cell are each other's nearest neighbours.

    Parameters
    ----------
    n_inputs
        Input width of each modality's encoder (two values).
    n_latent
        Width of the shared embedding.
    n_hidden
        Hidden layer widths of each modality's encoder.
    dropout
        Dropout rates of each modality's encoder (one value per encoder, or one per hidden layer).
    temperature_init
        Initial log of the logit scale: the logits of a pair are ``exp(log_temperature) · cos(z1, z2)``.
    """

    # Added to the training plan's message when the loss stops being finite.
    divergence_hint = ", or lower temperature_init"

    def __init__(
        self,
        n_inputs: Sequence[int],
        n_latent: int,
        n_hidden: Sequence[Sequence[int]],
        dropout: Sequence[float | Sequence[float]],
        temperature_init: float,
    ):
        super().__init__()
        self.encoders = nn.ModuleList(
            MLPEncoder(n_input, n_latent, hidden, rate)
            for n_input, hidden, rate in zip(n_inputs, n_hidden, dropout, strict=True)
        )
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature_init)))

    def inference(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        """The L2-normalised embedding of the cells ``x`` of modality ``modality`` (0 or 1)."""
        return F.normalize(self.encoders[modality](x), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """The multiplier of cosine similarities in the loss (clipped, as CLIP does)."""
        return self.log_temperature.clamp(max=MAX_LOG_TEMPERATURE).exp()

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> LossOutput:
        """Symmetric InfoNCE over a minibatch of paired cells: row ``i`` of ``x1`` and of ``x2`` are one cell."""
        z1, z2 = self.inference(x1, 0), self.inference(x2, 1)
        logits = self.logit_scale() * z1 @ z2.T
        targets = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        return LossOutput(
            loss=loss,
            n_obs_minibatch=logits.shape[0],
            extra_metrics={"logit_scale": self.logit_scale().detach()},
        )
