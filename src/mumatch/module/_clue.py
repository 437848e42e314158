"""CLUE's torch module: a cross-linked unified embedding of K modalities (no AnnData here).

CLUE (cross-linked unified embedding, the winning method of the NeurIPS 2021 matching task, implemented in scglue as
``SCCLUEModel``) splits the latent space into one subspace per modality, ``z = (z_1, ..., z_K)``, and learns a K × K
matrix of encoders ``q(z_k | x_j)``: the self-encoders (``k = j``) and the cross-encoders (``k != j``) that predict,
from modality ``j`` alone, what the other modalities' subspaces should be. Here each source modality ``j`` has one
MLP trunk on its preprocessed representation (LSI/PCA) and K Gaussian heads, one per subspace.

For a cell measured in a set ``S`` of modalities, the joint posterior of ``z_k`` is the product of the Gaussian
experts ``q(z_k | x_j), j in S`` (precision-weighted). Decoders ``p(x_k | z_k, batch)`` model the raw counts with a
negative binomial or a library-aware Bernoulli (:mod:`mumatch.nn._likelihoods`).

The loss of a minibatch (every term averaged over the cells it applies to). As in GLUE, a reconstruction term is the
negative log-likelihood per feature and its KL is divided by the number of features, so that the loss weights of the
competition's configuration (``lam_*``) keep their meaning whatever the number of genes or peaks:

- ``self``: for each observed modality ``j``, the ELBO of ``x_j`` decoded from ``z_j ~ q(z_j | x_j)``, with the KL
  of all K subspaces of ``q(z | x_j)`` to the standard normal prior (weighted by ``lam_kl``);
- ``cross`` (cells measured in two or more modalities): ``x_k`` decoded from ``z_k ~ q(z_k | x_j)``, ``j != k``
  (real cross), plus the ELBO of every observed ``x_k`` decoded from the product of experts (joint cross);
- ``mse`` (same cells): squared distance of each modality's embedding (posterior means) to the cell's mean embedding;
- ``adversarial``: a discriminator tells which modality's encoder produced an embedding; a gradient reversal layer
  makes the encoders fool it, aligning the modalities' embedding distributions on every cell, paired or not.

Unpaired cells thus train their self terms and the adversarial term; paired cells train every term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scvi.module.base import LossOutput
from scvi.nn import FCLayers
from torch import nn

from ..nn._discriminator import ModalityDiscriminator
from ..nn._likelihoods import LIKELIHOODS, count_log_likelihood

# Variances of the Gaussian experts are kept in a range where the product of experts stays well conditioned.
MIN_LOG_VARIANCE, MAX_LOG_VARIANCE = -10.0, 10.0


class CLUEModule(nn.Module):
    """The CLUE networks and losses for K modalities.

    Parameters
    ----------
    n_input
        Width of each modality's input representation.
    n_features
        Number of count features of each modality.
    likelihoods
        Count likelihood of each modality, ``"nb"`` or ``"bernoulli"``.
    n_batch
        Number of batch levels (decoders take a one-hot batch; an all-zero row means an unknown batch).
    n_latent
        Width of each modality's latent subspace (the full embedding is ``K * n_latent`` wide).
    n_hidden, n_layers
        Encoder trunks (``x2u`` in the competition's configuration).
    n_hidden_decoder, n_layers_decoder
        Decoders (``u2x``).
    n_hidden_discriminator, n_layers_discriminator
        Discriminator (``du``).
    dropout
        Dropout rate of every MLP.
    lam_self, lam_cross, lam_mse, lam_kl, lam_adversarial
        Weights of the loss terms (see the module docstring).
    """

    def __init__(
        self,
        n_input: Sequence[int],
        n_features: Sequence[int],
        likelihoods: Sequence[str],
        n_batch: int,
        *,
        n_latent: int = 20,
        n_hidden: int = 512,
        n_layers: int = 2,
        n_hidden_decoder: int = 128,
        n_layers_decoder: int = 1,
        n_hidden_discriminator: int = 128,
        n_layers_discriminator: int = 2,
        dropout: float = 0.2,
        lam_self: float = 1.0,
        lam_cross: float = 2.0,
        lam_mse: float = 1.0,
        lam_kl: float = 1.0,
        lam_adversarial: float = 2.0,
    ):
        super().__init__()
        self.n_mods = len(n_input)
        if self.n_mods < 2:
            raise ValueError(f"CLUE needs at least two modalities, got {self.n_mods}")
        if not len(n_features) == len(likelihoods) == self.n_mods:
            raise ValueError("n_input, n_features and likelihoods must have one entry per modality")
        for likelihood in likelihoods:
            if likelihood not in LIKELIHOODS:
                raise ValueError(f"likelihood {likelihood!r} is not supported; choose one of {list(LIKELIHOODS)}")
        self.likelihoods = list(likelihoods)
        self.n_features = [int(width) for width in n_features]
        self.n_latent = n_latent
        self.n_batch = n_batch
        self.lam_self, self.lam_cross, self.lam_mse = lam_self, lam_cross, lam_mse
        self.lam_kl, self.lam_adversarial = lam_kl, lam_adversarial
        # Layer norm, not batch norm: a minibatch mixes cells measured in different modalities, and the rows of a
        # modality a cell lacks are computed then masked, so they must not leak into other cells' normalisation.
        # Inputs are standardised with statistics of the training cells, kept with the weights for new data.
        for j, width in enumerate(n_input):
            self.register_buffer(f"input_mean_{j}", torch.zeros(width))
            self.register_buffer(f"input_std_{j}", torch.ones(width))
        self.trunks = nn.ModuleList(
            FCLayers(
                width,
                n_hidden,
                n_layers=n_layers,
                n_hidden=n_hidden,
                dropout_rate=dropout,
                use_batch_norm=False,
                use_layer_norm=True,
                activation_fn=nn.ELU,
            )
            for width in n_input
        )
        # heads[j][k]: q(z_k | x_j), mean and log-variance in one linear layer.
        self.heads = nn.ModuleList(
            nn.ModuleList(nn.Linear(n_hidden, 2 * n_latent) for _ in range(self.n_mods)) for _ in range(self.n_mods)
        )
        self.decoders = nn.ModuleList(
            nn.Sequential(
                FCLayers(
                    n_latent + n_batch,
                    n_hidden_decoder,
                    n_layers=n_layers_decoder,
                    n_hidden=n_hidden_decoder,
                    dropout_rate=dropout,
                    use_batch_norm=False,
                    use_layer_norm=True,
                    activation_fn=nn.ELU,
                ),
                nn.Linear(n_hidden_decoder, width),
            )
            for width in n_features
        )
        self.log_theta = nn.ParameterList(nn.Parameter(torch.zeros(width)) for width in n_features)
        self.discriminator = ModalityDiscriminator(
            self.n_mods * n_latent,
            self.n_mods,
            n_hidden=n_hidden_discriminator,
            n_layers=n_layers_discriminator,
            dropout=dropout,
        )

    def set_input_scaling(self, j: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Record the standardisation of modality ``j``'s input (statistics of the training cells)."""
        getattr(self, f"input_mean_{j}").copy_(mean)
        getattr(self, f"input_std_{j}").copy_(std.clamp_min(1e-6))

    def encode(self, j: int, rep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and log-variances of every subspace from modality ``j``: two ``(n, K, n_latent)``."""
        hidden = self.trunks[j]((rep - getattr(self, f"input_mean_{j}")) / getattr(self, f"input_std_{j}"))
        stats = torch.stack([head(hidden) for head in self.heads[j]], dim=1)
        mean, log_var = stats.chunk(2, dim=-1)
        return mean, log_var.clamp(MIN_LOG_VARIANCE, MAX_LOG_VARIANCE)

    def embed(self, j: int, rep: torch.Tensor) -> torch.Tensor:
        """The embedding used for matching: the concatenated posterior means from modality ``j``, ``(n, K * d)``."""
        mean, _ = self.encode(j, rep)
        return mean.flatten(1)

    def generative(self, k: int, z: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Expected composition ``px_scale`` of modality ``k``'s counts given ``z_k`` and the one-hot batch."""
        return torch.softmax(self.decoders[k](torch.cat([z, batch], dim=-1)), dim=-1)

    def _nll(self, k: int, z: torch.Tensor, counts: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        px_scale = self.generative(k, z, batch)
        library = counts.sum(-1, keepdim=True)
        log_likelihood = count_log_likelihood(self.likelihoods[k], counts, px_scale, library, self.log_theta[k])
        return -log_likelihood / counts.shape[-1]

    @staticmethod
    def _sample(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        return mean + torch.randn_like(mean) * (0.5 * log_var).exp()

    @staticmethod
    def _kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        # KL(N(mean, var) | N(0, 1)) in closed form: torch.distributions would check its arguments and raise its own
        # error on NaN weights before the training step reports the non-finite loss (FloatingPointError).
        return (0.5 * (log_var.exp() + mean.square() - 1.0 - log_var)).flatten(1).sum(-1)

    @staticmethod
    def _mean(values: torch.Tensor) -> torch.Tensor:
        """Mean over the cells; 0 (still attached to the graph) when there are none."""
        return values.sum() / max(values.shape[0], 1)

    def loss(
        self,
        reps: Sequence[torch.Tensor],
        counts: Sequence[torch.Tensor],
        observed: torch.Tensor,
        batch: torch.Tensor,
    ) -> LossOutput:
        """Loss terms of a minibatch.

        Every network runs on the cells a term applies to only (encoder ``j`` on the cells measured in ``j``, the
        cross decoders on the cells measured in several modalities): in a transductive minibatch most cells lack a
        modality, and computing their rows only to mask them out cost about half of a training step.

        Parameters
        ----------
        reps
            Input representation of every modality, ``(n, n_input[j])``; rows of cells not measured in ``j`` are
            ignored (any finite value).
        counts
            Raw counts of every modality, ``(n, n_features[j])``; same convention.
        observed
            ``(n, K)`` boolean: which modalities measured each cell.
        batch
            ``(n, K, n_batch)`` one-hot batch of each cell in each modality (all zeros where unknown).

        Returns
        -------
        scvi-tools' ``LossOutput``: ``loss`` (what the optimiser minimises, the discriminator's cross-entropy counted
        positively) and, in ``extra_metrics``, its unweighted terms ``self``, ``kl``, ``cross``, ``mse`` and
        ``adversarial`` (the discriminator's cross-entropy), and ``generator``: what the encoders and decoders
        minimise, the loss with the adversarial term counted negatively.
        """
        n_cells = observed.shape[0]
        mask = observed.to(reps[0].dtype)  # the module's precision (e.g. a Trainer's "bf16-true")
        n_observed = mask.sum(-1)
        rows = [torch.nonzero(observed[:, j]).squeeze(1) for j in range(self.n_mods)]
        self_nll = kl = cross = mse = adversarial = reps[0].new_zeros(())

        # Encoders on the cells each modality measured, scattered into (n, K, d) tensors (zeros elsewhere, masked).
        sub_means, means, log_vars = [], [], []
        for j in range(self.n_mods):
            mean, log_var = self.encode(j, reps[j][rows[j]])
            sub_means.append(mean)
            full = mean.new_zeros((n_cells, self.n_mods, self.n_latent))
            means.append(full.index_copy(0, rows[j], mean))
            log_vars.append(full.index_copy(0, rows[j], log_var))
            z_j = self._sample(mean[:, j], log_var[:, j])
            self_nll = self_nll + self._mean(self._nll(j, z_j, counts[j][rows[j]], batch[rows[j], j]))
            kl = kl + self._mean(self._kl(mean, log_var)) / self.n_features[j]

        # Real cross: x_k decoded from z_k ~ q(z_k | x_j), on the cells measured in both j and k.
        for j in range(self.n_mods):
            for k in range(self.n_mods):
                if k == j:
                    continue
                pair = torch.nonzero(observed[:, j] & observed[:, k]).squeeze(1)
                z_k = self._sample(means[j][pair, k], log_vars[j][pair, k])
                cross = cross + self._mean(self._nll(k, z_k, counts[k][pair], batch[pair, k]))

        # Joint cross: the product of the observed experts of every subspace (precision-weighted means), on the
        # cells measured in two or more modalities.
        multi = torch.nonzero(n_observed >= 2).squeeze(1)
        multi_mask = mask[multi].T[:, :, None, None]
        precision = torch.stack([(-log_var[multi]).exp() for log_var in log_vars], dim=0) * multi_mask
        stacked = torch.stack([mean[multi] for mean in means], dim=0)
        joint_precision = precision.sum(0).clamp_min(1e-8)
        joint_mean = (precision * stacked).sum(0) / joint_precision
        joint_log_var = -joint_precision.log()
        for k in range(self.n_mods):
            present = torch.nonzero(observed[multi, k]).squeeze(1)
            cells = multi[present]
            z_k = self._sample(joint_mean[present, k], joint_log_var[present, k])
            cross = cross + self._mean(self._nll(k, z_k, counts[k][cells], batch[cells, k]))
        joint_kl = self._mean(self._kl(joint_mean, joint_log_var)) / sum(self.n_features)
        cross = cross + self.lam_kl * joint_kl

        # Each modality's embedding against the cell's mean embedding over its observed modalities.
        counts_multi = n_observed[multi][:, None, None]
        centre = (multi_mask * stacked).sum(0) / counts_multi
        squared = ((stacked - centre) ** 2).mean(dim=(-1, -2)) * multi_mask[:, :, 0, 0]
        mse = self._mean(squared.sum(0) / counts_multi[:, 0, 0])

        if self.lam_adversarial > 0 and n_cells:
            embeddings = torch.cat([mean.flatten(1) for mean in sub_means], dim=0)
            labels = torch.cat([torch.full((len(index),), j, device=mask.device) for j, index in enumerate(rows)])
            adversarial = self.discriminator.adversarial_loss(embeddings, labels)

        loss = (
            self.lam_self * (self_nll + self.lam_kl * kl)
            + self.lam_cross * cross
            + self.lam_mse * mse
            + self.lam_adversarial * adversarial
        )
        terms = {"self": self_nll, "kl": kl, "cross": cross, "mse": mse, "adversarial": adversarial}
        # The gradient reversal makes the encoders minimise the loss with the adversarial term counted negatively
        # (scglue's gen_loss): the objective to watch for early stopping, where better alignment counts as progress.
        terms["generator"] = loss - 2 * self.lam_adversarial * adversarial
        return LossOutput(
            loss=loss,
            n_obs_minibatch=observed.shape[0],
            extra_metrics={name: value.detach() for name, value in terms.items()},
        )
