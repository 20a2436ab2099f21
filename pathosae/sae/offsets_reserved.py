"""Conditional offsets and reserved latents together (registry name ``topk_offsets_reserved``).

The two confounder-aware SAEs fail in complementary ways. The offsets absorb a dense per-level
shift outside the dictionary but leave sparse confounder atoms (a scanner's artefact, a site's
stain pattern on some tiles) in the free latents; the reserved block can carry sparse atoms but
must also carry the dense shift, which costs it reconstruction. Here the offsets take the dense
part (ComBat's location step, started at its estimates) and the reserved block, trained with the
supervised and within-label independence terms of ``topk_reserved``, takes what is left of the
confounder. Everything else is inherited: the layout and losses from
:class:`~pathosae.sae.reserved.TopKReservedSAE`, the offsets from
:class:`~pathosae.sae.conditional.TopKOffsetsSAE` (Python's method order runs both
constructors, resets and input-scale folds).

The edit does both: codes encoded under each row's own offsets, every reserved block zeroed, and
the reconstruction decoded with the training-weighted mean offset.
"""

from __future__ import annotations

from torch import Tensor

from pathosae.sae.conditional import ConditionsLike, TopKOffsetsSAE
from pathosae.sae.registry import register
from pathosae.sae.reserved import TopKReservedSAE


@register("topk_offsets_reserved")
class TopKOffsetsReservedSAE(TopKReservedSAE, TopKOffsetsSAE):
    """Per-level offsets for the dense shifts, a supervised latent block for the rest."""

    def edit(self, x: Tensor, conditions: ConditionsLike | None = None) -> tuple[Tensor, Tensor]:
        """Codes under the rows' own offsets with the blocks zeroed; the mean offset decodes."""
        z = self.ablate(self.encode(x, conditions))
        return z, self.decode(z)  # no conditions: every row decodes with the mean offset
