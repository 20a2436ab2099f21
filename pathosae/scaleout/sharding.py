"""Split a cohort's slides into shards, one per array task."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from pathosae.errors import PathosaeError


def shard(slide_ids: Sequence[str], slides_per_shard: int) -> list[list[str]]:
    """Consecutive chunks of ``slide_ids`` (in the given order) of at most ``slides_per_shard``.

    The same list always gives the same shards, so a repeated or requeued shard sees the same
    slides; no shard is empty.
    """
    if slides_per_shard < 1:
        raise PathosaeError(
            f"slides_per_shard must be at least 1, got {slides_per_shard}. "
            "Fix: set executor.slides_per_shard to a positive number."
        )
    ids = [str(s) for s in slide_ids]
    duplicates = sorted(s for s, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise PathosaeError(
            f"slide ids appear more than once: {', '.join(duplicates[:10])}. "
            "Fix: give every slide a unique slide_id in the manifest."
        )
    return [ids[i : i + slides_per_shard] for i in range(0, len(ids), slides_per_shard)]


def shard_for_array(
    slide_ids: Sequence[str], slides_per_shard: int, max_array_size: int
) -> list[list[str]]:
    """Like :func:`shard`, but with shards grown so there are at most ``max_array_size`` of them.

    Slurm refuses arrays above its MaxArraySize; larger shards keep a big cohort in one array.
    """
    needed = math.ceil(len(slide_ids) / max_array_size) if max_array_size > 0 else slides_per_shard
    return shard(slide_ids, max(slides_per_shard, needed))
