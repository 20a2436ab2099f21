"""The small interface every SAE architecture implements.

Weights: ``W_enc`` and ``W_dec`` are both ``(d_sae, d_in)``: row ``i`` of ``W_dec`` is dictionary
atom ``i`` (a "decoder column" in matrix notation) and row ``i`` of ``W_enc`` its encoder
direction, the layout ``embedding_bag`` reads. ``encode`` returns dense codes, ``decode`` maps dense
codes back, ``forward`` returns both, and ``losses(x)`` returns the named training losses that the
training loop sums. Architectures that select few latents also implement ``encode_sparse`` so
training and evaluation only touch the latents that fire.

Confounder-aware SAEs (``needs_conditions``; ``pathosae.sae.conditional``) extend this with the
rows' confounder level codes: ``losses(x, conditions=..., labels=...)`` and an optional
``conditions`` argument to ``encode``/``decode``/``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pathosae.sae.sparse import SparseCodes, active_preacts, fixed_k_codes


@dataclass
class TrainingOptions:
    """Settings that only matter while training (not saved with the weights)."""

    dead_window: int = 1_000_000
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    redundancy_coefficient: float = 0.0
    redundancy_latents: int = 512


def shift_gradient(shift: Tensor, w_enc: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Zeros whose gradient is that of the selected pre-activations with respect to ``shift``.

    ``pre[r, c] = (x[r] - shift[r] - b_dec) @ W_enc[c] + b_enc[c]``: the sparse path computes the
    value from a detached input, so ``-shift[r] @ W_enc[c]`` minus its detached copy (exactly 0)
    adds the missing ``d pre / d shift = -W_enc[c]`` without touching W_enc's gradient.
    """
    if not shift.requires_grad:
        return shift.new_zeros(rows.shape[0])
    link = -(shift[rows] * w_enc[cols].detach()).sum(dim=1)
    return link - link.detach()


class SAE(nn.Module):
    """Base class: parameters, bias handling, decoder-norm constraint and shared losses."""

    architecture: ClassVar[str] = ""
    sparse_training: ClassVar[bool] = False
    """True when ``losses`` uses ``encode_sparse`` (TopK family); False for dense activations."""
    needs_conditions: ClassVar[bool] = False
    """True for confounder-aware SAEs (``pathosae.sae.conditional``): training passes them each
    row's confounder level codes (and labels); ``losses(x)`` stays the interface of all others."""
    samples_since_fired: Tensor  # buffer registered in __init__
    training_log: dict[str, Any]
    """What ``train_sae`` did (set on the models it returns)."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__()
        if d_in < 1 or d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got {d_in} and {d_sae}")
        self.d_in = d_in
        self.d_sae = d_sae
        self.W_enc = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # Samples seen since each latent last fired; only used while training (not saved).
        self.register_buffer(
            "samples_since_fired", torch.zeros(d_sae, dtype=torch.int64), persistent=False
        )
        self.train_opts = TrainingOptions()
        self.reset_parameters()

    # ---- construction and saving -----------------------------------------------------------
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments, saved in cfg.json so ``load_sae`` can rebuild the model."""
        return {"d_in": self.d_in, "d_sae": self.d_sae}

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Unit-norm random decoder atoms; the encoder starts as the decoder's transpose."""
        self.W_dec.copy_(torch.randn(self.d_sae, self.d_in, generator=generator))
        self.normalize_decoder()
        self.W_enc.copy_(self.W_dec)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make a model trained on ``scale * x`` take ``x`` directly.

        The codes are divided by ``scale`` (encoder bias, decoder bias and any threshold shrink by
        it) so the decoder atoms keep unit norm and ``decode(encode(x))`` is in input units.
        """
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)

    # ---- the interface ---------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc.t())

    def activate(self, pre: Tensor) -> Tensor:
        """Dense codes from dense pre-activations (the architecture's nonlinearity)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        return self.activate(self.pre_acts(x))

    def decode(self, z: Tensor) -> Tensor:
        return torch.addmm(self.b_dec, z, self.W_dec)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encode(x)
        return z, self.decode(z)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """Active latents only; the default goes through the dense codes."""
        z = self.encode(x)
        rows, cols = (z != 0).nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=x.shape[0])
        offsets = torch.cumsum(counts, 0) - counts
        return SparseCodes(z[rows, cols], rows, cols, offsets, x.shape[0], self.d_sae)

    def reconstruct(self, x: Tensor) -> Tensor:
        """``decode(encode(x))`` through the cheapest path the architecture has."""
        return self.decode_sparse(self.encode_sparse(x))

    def decode_sparse(self, codes: SparseCodes) -> Tensor:
        return codes.decode(self.W_dec) + self.b_dec

    def losses(self, x: Tensor, reference: bool = False) -> dict[str, Tensor]:
        """Named losses for one batch; the training loop minimises their sum.

        ``reference=True`` takes the plain dense autograd path where an architecture has a sparse
        one (the tests compare the two); dense architectures have only that path.
        """
        raise NotImplementedError

    # ---- shared loss terms -----------------------------------------------------------------
    @staticmethod
    def mse(recon: Tensor, x: Tensor) -> Tensor:
        """Mean squared error per element (inputs are scaled so E||x||^2 is about d_in)."""
        return (recon - x).pow(2).mean()

    def _track_firing(self, fired: Tensor, batch_size: int) -> None:
        if self.training:
            self.samples_since_fired.add_(batch_size)
            self.samples_since_fired[fired] = 0

    def dead_mask(self) -> Tensor:
        return self.samples_since_fired >= self.train_opts.dead_window

    def aux_loss(
        self, x: Tensor, pre: Tensor, recon: Tensor, x_centred: Tensor, shift: Tensor | None = None
    ) -> Tensor:
        """AuxK: the dead latents' top-k_aux pre-activations reconstruct the detached residual.

        No decoder bias in the auxiliary reconstruction; normalised by the residual's variance;
        zero when no latent is dead. ``shift``: a per-row input offset taken off before encoding
        (conditional SAEs), whose encoder-side gradient the sparse path must attach by hand.
        """
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if not self.training or n_dead == 0 or self.train_opts.aux_coefficient == 0:
            return x.new_zeros(())
        k_aux = min(self.train_opts.aux_k or self.d_in // 2, n_dead)
        with torch.no_grad():
            values, indices = pre.detach().masked_fill(~dead, float("-inf")).topk(k_aux, dim=1)
        residual = (x - recon).detach()
        if pre.requires_grad:  # dense reference path (tests compare the sparse one against it)
            z_aux = torch.zeros_like(pre).scatter(1, indices, torch.relu(pre.gather(1, indices)))
            aux_recon = z_aux @ self.W_dec
        else:
            codes = fixed_k_codes(values, indices, self.d_sae)
            values = active_preacts(
                codes.values, x_centred, self.W_enc, self.b_enc, self.b_dec, codes.rows, codes.cols
            )
            if shift is not None:
                values = values + shift_gradient(shift, self.W_enc, codes.rows, codes.cols)
            codes.values = torch.relu(values)
            aux_recon = codes.decode(self.W_dec)
        denominator = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        loss = (aux_recon - residual).pow(2).sum() / denominator
        return self.train_opts.aux_coefficient * torch.nan_to_num(loss, nan=0.0)

    def redundancy_loss(self, fired: Tensor) -> Tensor | None:
        """Mean squared cosine between the decoder atoms of latents that fired in this batch.

        The remedy for feature splitting: atoms that fire together should not point the same
        way. A random subset keeps it O(m^2 d) with m = ``redundancy_latents``.
        """
        coefficient = self.train_opts.redundancy_coefficient
        if coefficient == 0 or not self.training:
            return None
        active = fired.nonzero(as_tuple=True)[0]
        if active.numel() < 2:
            return self.W_dec.new_zeros(())
        if active.numel() > self.train_opts.redundancy_latents:
            keep = torch.randperm(active.numel(), device=active.device)
            active = active[keep[: self.train_opts.redundancy_latents]]
        atoms = self.W_dec[active]
        atoms = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)
        gram = atoms @ atoms.t()
        off_diagonal = gram - torch.diag_embed(torch.diagonal(gram))
        n = atoms.shape[0]
        return coefficient * off_diagonal.pow(2).sum() / (n * (n - 1))

    # ---- decoder constraint ------------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the gradient component along each (unit-norm) atom: the step then keeps norms."""
        grad = self.W_dec.grad
        if grad is None:
            return
        parallel = (grad * self.W_dec).sum(dim=1, keepdim=True)
        grad.sub_(parallel * self.W_dec)
