"""Confounder-aware TopK SAEs: the shared conditioned interface, and *conditional offsets*.

``ConditionedTopKSAE`` is a TopK SAE that also takes each row's confounder level codes
(``conditions``: rows × confounders, int64, -1 = unknown; see ``pathosae.sae.levels``) and, for
within-label terms, its label. Its level vocabulary is a constructor argument, so ``cfg.json``
carries it and ``model.level_codes(frame)`` maps any table's level names to the trained codes.
``encode``/``decode``/``forward``/``encode_sparse``/``decode_sparse``/``reconstruct`` accept
``conditions`` as an optional last argument; without it every row counts as unknown (for the
offsets model: the mean offset, i.e. the harmonised view). ``edit(x, conditions)`` is each
architecture's confounder edit, returning the edited codes and reconstruction.

``TopKOffsetsSAE`` (registry name ``topk_offsets``) is ComBat's location step inside the SAE: a
learned offset vector per level of each confounder is taken off the input before encoding and
added back after decoding, so a dense per-site (per-scanner, per-batch) shift is absorbed outside
the dictionary and the latents model what is left. The offsets start at ComBat's location
estimates (per-level means, backfitted over the confounders) and are then trained with the rest.
The edit replaces every row's offsets by the *training-row-weighted* mean offset (the pooled
training distribution, ComBat's grand-mean reference); a level with no training rows, or a code of
-1, gets that mean offset too, and ``unseen_levels``/``unknown_rows`` report where that happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from pathosae.errors import PathosaeError
from pathosae.sae.base import shift_gradient
from pathosae.sae.levels import (
    UNKNOWN,
    LevelsLike,
    check_codes,
    encode_levels,
    levels_to_json,
    normalise_levels,
    unseen_levels,
)
from pathosae.sae.registry import register
from pathosae.sae.sparse import SparseCodes, active_preacts, mask_codes, offsets_from_rows
from pathosae.sae.topk import TopKSAE

ConditionsLike = Tensor | np.ndarray


class ConditionedTopKSAE(TopKSAE):
    """A TopK SAE whose losses (and, for some, whose encoding) see confounder level codes."""

    needs_conditions: ClassVar[bool] = True

    def __init__(self, d_in: int, d_sae: int, k: int = 32, levels: LevelsLike | None = None) -> None:
        self.levels = normalise_levels(levels)
        super().__init__(d_in, d_sae, k)

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "levels": levels_to_json(self.levels)}

    # ---- level vocabulary ------------------------------------------------------------------
    @property
    def confounders(self) -> list[str]:
        return list(self.levels)

    def level_blocks(self) -> Iterator[tuple[int, int, int]]:
        """``(confounder index, first position, number of levels)`` in level-major order."""
        start = 0
        for j, names in enumerate(self.levels.values()):
            yield j, start, len(names)
            start += len(names)

    @property
    def n_levels_total(self) -> int:
        return sum(len(names) for names in self.levels.values())

    def level_codes(self, frame: pd.DataFrame) -> np.ndarray:
        """Conditions of a table's rows (its confounder columns by name); -1 where unseen."""
        return encode_levels(frame, self.levels)

    def unseen_levels(self, frame: pd.DataFrame) -> dict[str, list[str]]:
        """Levels in ``frame`` that training did not see (they get the unknown-level treatment)."""
        return unseen_levels(frame, self.levels)

    def conditions_tensor(self, conditions: ConditionsLike | None, n_rows: int) -> Tensor:
        """Checked int64 codes on the model's device; None means every row is unknown."""
        device = self.W_dec.device
        if conditions is None:
            return torch.full((n_rows, len(self.levels)), UNKNOWN, dtype=torch.int64, device=device)
        codes = torch.as_tensor(conditions, dtype=torch.int64, device=device)
        codes = codes[:, None] if codes.ndim == 1 else codes
        if codes.shape[0] != n_rows:
            raise PathosaeError(
                f"conditions have {codes.shape[0]} rows for {n_rows} feature rows. Fix: pass the "
                "level codes of exactly these rows, in the same order."
            )
        check_codes(codes, self.levels)
        return codes

    # ---- hooks for the architectures -------------------------------------------------------
    def shift(self, conditions: Tensor) -> Tensor | None:
        """Per-row offset taken off the input before encoding and added back after decoding."""
        del conditions  # no offset unless an architecture defines one
        return None

    @torch.no_grad()
    def prepare(self, sample: Tensor, sample_conditions: Tensor, conditions: Tensor) -> Tensor:
        """Before training (inputs already scaled): fit what the data gives directly, and return
        the sample the decoder bias (geometric median) is fitted to. ``conditions``: all rows'."""
        del sample_conditions, conditions
        return sample

    def condition_losses(
        self, codes: SparseCodes, conditions: Tensor, labels: Tensor | None
    ) -> dict[str, Tensor]:
        """Named loss terms that use the level codes (and labels); none by default."""
        del codes, conditions, labels
        return {}

    def edit(self, x: Tensor, conditions: ConditionsLike | None = None) -> tuple[Tensor, Tensor]:
        """The architecture's confounder edit: ``(edited codes, edited reconstruction)``."""
        raise NotImplementedError

    # ---- the interface, with conditions ----------------------------------------------------
    def _shift_of(self, conditions: ConditionsLike | None, n_rows: int) -> Tensor | None:
        return self.shift(self.conditions_tensor(conditions, n_rows))

    def encode(self, x: Tensor, conditions: ConditionsLike | None = None) -> Tensor:
        shift = self._shift_of(conditions, x.shape[0])
        return self.activate(self.pre_acts(x if shift is None else x - shift))

    def decode(self, z: Tensor, conditions: ConditionsLike | None = None) -> Tensor:
        shift = self._shift_of(conditions, z.shape[0])
        recon = torch.addmm(self.b_dec, z, self.W_dec)
        return recon if shift is None else recon + shift

    def forward(self, x: Tensor, conditions: ConditionsLike | None = None) -> tuple[Tensor, Tensor]:
        z = self.encode(x, conditions)
        return z, self.decode(z, conditions)

    def encode_sparse(self, x: Tensor, conditions: ConditionsLike | None = None) -> SparseCodes:
        shift = self._shift_of(conditions, x.shape[0])
        return super().encode_sparse(x if shift is None else x - shift)

    def decode_sparse(self, codes: SparseCodes, conditions: ConditionsLike | None = None) -> Tensor:
        shift = self._shift_of(conditions, codes.batch_size)
        recon = codes.decode(self.W_dec) + self.b_dec
        return recon if shift is None else recon + shift

    def reconstruct(self, x: Tensor, conditions: ConditionsLike | None = None) -> Tensor:
        return self.decode_sparse(self.encode_sparse(x, conditions), conditions)

    # ---- training ----------------------------------------------------------------------------
    def losses(
        self, x: Tensor, reference: bool = False, *, conditions: ConditionsLike | None = None,
        labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """TopK's losses on ``x`` less its rows' offsets, plus the architecture's condition terms.

        Without ``conditions`` every row is unknown (the condition terms then have nothing to
        use); ``reference=True`` is the dense autograd path the tests check the sparse one with.
        """
        codes_in = self.conditions_tensor(conditions, x.shape[0])
        shift = self.shift(codes_in)
        x_in = x if shift is None else x - shift
        if reference:
            pre = self.pre_acts(x_in)
            z = self.activate(pre)
            values, rows, cols = mask_codes(z, z != 0)
            codes = SparseCodes(
                values, rows, cols, offsets_from_rows(rows, x.shape[0]), x.shape[0], self.d_sae
            )
            recon = torch.addmm(self.b_dec, z, self.W_dec)
            x_centred = x_in - self.b_dec
        else:
            codes, pre, x_centred = self._sparse_codes(x_in, shift)
            recon = codes.decode(self.W_dec) + self.b_dec
        if shift is not None:
            recon = recon + shift
        fired = codes.fired()
        out = {"mse": self.mse(recon, x), **self.condition_losses(codes, codes_in, labels)}
        self._track_firing(fired, x.shape[0])
        out["aux"] = self.aux_loss(x, pre, recon, x_centred, None if reference else shift)
        redundancy = self.redundancy_loss(fired)
        if redundancy is not None:
            out["redundancy"] = redundancy
        return out

    def _sparse_codes(self, x_in: Tensor, shift: Tensor | None) -> tuple[SparseCodes, Tensor, Tensor]:
        """``sparse_codes_with_grad`` on the shifted input, with the shift's encoder gradient."""
        x_centred = (x_in - self.b_dec).detach()
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x_centred, self.W_enc.t())
        codes = self.select(pre)
        values = active_preacts(
            codes.values, x_centred, self.W_enc, self.b_enc, self.b_dec, codes.rows, codes.cols
        )
        if shift is not None:
            values = values + shift_gradient(shift, self.W_enc, codes.rows, codes.cols)
        codes.values = torch.relu(values)
        return codes, pre, x_centred


@register("topk_offsets")
class TopKOffsetsSAE(ConditionedTopKSAE):
    """TopK SAE with a learned offset per confounder level (ComBat's location step inside)."""

    level_counts: Tensor  # buffer registered in __init__

    def __init__(self, d_in: int, d_sae: int, k: int = 32, levels: LevelsLike | None = None) -> None:
        super().__init__(d_in, d_sae, k, levels)
        # One table for every confounder's levels (confounder-major), zero until prepared.
        self.offsets = nn.Parameter(torch.zeros(self.n_levels_total, d_in))
        # Training rows per level: the weights of the mean offset (saved with the weights).
        self.register_buffer("level_counts", torch.zeros(self.n_levels_total, dtype=torch.int64))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        if isinstance(getattr(self, "offsets", None), nn.Parameter):  # absent inside SAE.__init__
            self.offsets.zero_()

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.offsets.div_(scale)

    # ---- offsets -----------------------------------------------------------------------------
    # Both below avoid a host sync (no Python branch on tensor values): they run every step.
    def _seen(self, start: int, size: int) -> Tensor:
        """Levels that had training rows (all of them before any counts were recorded)."""
        counts = self.level_counts[start : start + size]
        return (counts > 0) | (counts.sum() == 0)

    def _weights(self, start: int, size: int) -> Tensor:
        """Training-row shares of the levels (uniform before any counts were recorded)."""
        counts = self.level_counts[start : start + size].to(self.offsets.dtype)
        total = counts.sum()
        return torch.where(total > 0, counts / total.clamp_min(1), torch.full_like(counts, 1 / size))

    def mean_offset(self) -> Tensor:
        """The sum over confounders of the training-row-weighted mean of their level offsets."""
        out = self.offsets.new_zeros(self.d_in)
        for _, start, size in self.level_blocks():
            out = out + self._weights(start, size) @ self.offsets[start : start + size]
        return out

    def unknown_rows(self, conditions: ConditionsLike) -> Tensor:
        """(rows × confounders) True where the row got the mean offset (code -1 or unseen level)."""
        codes = self.conditions_tensor(conditions, len(conditions))
        unknown = torch.zeros_like(codes, dtype=torch.bool)
        for j, start, size in self.level_blocks():
            column = codes[:, j]
            unknown[:, j] = (column < 0) | ~self._seen(start, size)[column.clamp_min(0)]
        return unknown

    def unseen_levels(self, frame: pd.DataFrame) -> dict[str, list[str]]:
        """Levels of ``frame`` not in the vocabulary, or in it without training rows."""
        out = super().unseen_levels(frame)
        present = self.level_codes(frame)
        for j, start, size in self.level_blocks():
            name = self.confounders[j]
            seen = self._seen(start, size).cpu().numpy()
            idle = sorted({self.levels[name][c] for c in present[:, j] if c >= 0 and not seen[c]})
            if idle:
                out[name] = sorted({*out.get(name, []), *idle})
        return out

    def shift(self, conditions: Tensor) -> Tensor | None:
        return self.row_offsets(conditions) if self.levels else None

    def row_offsets(self, conditions: Tensor) -> Tensor:
        """Each row's summed offsets; the mean offset for a code of -1 or an unseen level."""
        total = self.offsets.new_zeros(conditions.shape[0], self.d_in)
        for j, start, size in self.level_blocks():
            table = self.offsets[start : start + size]
            column = conditions[:, j]
            known = (column >= 0) & self._seen(start, size)[column.clamp_min(0)]
            mean = (self._weights(start, size) @ table).expand(column.shape[0], -1)
            total = total + torch.where(known[:, None], table[column.clamp_min(0)], mean)
        return total

    def edit(self, x: Tensor, conditions: ConditionsLike | None = None) -> tuple[Tensor, Tensor]:
        """Codes under each row's own offsets; reconstruction with the mean offset instead."""
        z = self.encode(x, conditions)
        return z, self.decode(z)  # no conditions: every row decodes with the mean offset

    # ---- initialisation --------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, sample: Tensor, sample_conditions: Tensor, conditions: Tensor) -> Tensor:
        """Count training rows per level; start the offsets at ComBat's location estimates.

        Per-level means of the sample, backfitted over the confounders (a few sweeps of "each
        confounder's level means of what the others leave"), centred on the weighted mean. The
        decoder bias is then fitted to the sample with its offsets removed.
        """
        codes = conditions.to(self.level_counts.device)
        for j, start, size in self.level_blocks():
            column = codes[:, j]
            counts = torch.bincount(column[column >= 0], minlength=size)
            self.level_counts[start : start + size] = counts
        sample_codes = sample_conditions.to(sample.device)
        for _ in range(3):
            for j, start, size in self.level_blocks():
                self.offsets[start : start + size] = 0
                residual = sample - self.row_offsets(sample_codes)
                self.offsets[start : start + size] = self._level_means(
                    residual, sample_codes[:, j], start, size
                )
        return sample - self.row_offsets(sample_codes)

    def _level_means(self, residual: Tensor, column: Tensor, start: int, size: int) -> Tensor:
        """Level means of ``residual`` less their weighted mean (levels absent here get 0)."""
        known = column >= 0
        sums = residual.new_zeros(size, self.d_in).index_add_(0, column[known], residual[known])
        counts = torch.bincount(column[known], minlength=size).to(residual.dtype)
        means = sums / counts.clamp_min(1)[:, None]
        present = counts > 0
        if not bool(present.any()):
            return torch.zeros_like(means)
        weights = self._weights(start, size) * present
        centre = (weights / weights.sum().clamp_min(1e-12)) @ means
        return torch.where(present[:, None], means - centre, torch.zeros_like(means))
