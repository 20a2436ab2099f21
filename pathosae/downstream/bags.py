"""Slides as bags of tile embeddings, with slide-level labels and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pathosae.errors import StageError
from pathosae.schema import PATIENT_ID, SLIDE_ID, SPLIT


@dataclass
class Bags:
    """Tile embeddings grouped by slide.

    ``x[i]`` is tile ``i``; ``slide[i]`` its slide's position (tiles of a slide are contiguous and
    slides appear in order). Slide-level arrays (``y``, ``site``, ...) have one entry per slide.
    """

    x: Tensor
    slide: Tensor
    y: Tensor
    site: np.ndarray
    slide_ids: np.ndarray
    patient: np.ndarray
    split: np.ndarray
    classes: tuple[str, ...]
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.y)
        for name in ("site", "slide_ids", "patient", SPLIT):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Bags.{name} has {len(getattr(self, name))} entries, y has {n}")
        if self.x.shape[0] != self.slide.shape[0]:
            raise ValueError("Bags.x and Bags.slide must have one row per tile")
        if self.slide.numel() and bool((self.slide[1:] < self.slide[:-1]).any()):
            raise ValueError("Bags.slide must be sorted: tiles of a slide are contiguous")

    # ---- sizes and views ---------------------------------------------------------------------
    @property
    def n_slides(self) -> int:
        return len(self.y)

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    def tile_y(self) -> Tensor:
        return self.y[self.slide]

    def tile_site(self) -> np.ndarray:
        return self.site[self.slide.numpy()]

    def with_x(self, x: Tensor) -> Bags:
        """The same bags with edited tile embeddings."""
        if x.shape[0] != self.x.shape[0]:
            raise ValueError(f"edited embeddings have {x.shape[0]} rows, bags have {self.x.shape[0]}")
        return replace(self, x=x)

    def subset(self, keep: np.ndarray) -> Bags:
        """The slides where the boolean ``keep`` is true (renumbered in order)."""
        keep = np.asarray(keep, dtype=bool)
        tile_keep = torch.from_numpy(keep)[self.slide]
        new_pos = torch.from_numpy(np.cumsum(keep) - 1)
        return Bags(
            x=self.x[tile_keep],
            slide=new_pos[self.slide[tile_keep]],
            y=self.y[torch.from_numpy(keep)],
            site=self.site[keep],
            slide_ids=self.slide_ids[keep],
            patient=self.patient[keep],
            split=self.split[keep],
            classes=self.classes,
            meta={k: v[keep] for k, v in self.meta.items()},
        )

    def split_of(self, name: str) -> Bags:
        keep = self.split == name
        if not keep.any():
            raise StageError(
                f"no slides in split {name!r} (splits present: {sorted(set(self.split))}). "
                "Fix: check the cohort's split column or the configured split names."
            )
        return self.subset(keep)

    def padded(self, slides: Tensor | None = None, width: int | None = None) -> tuple[Tensor, Tensor]:
        """``(S, T, D)`` embeddings and ``(S, T)`` mask of ``slides`` (slide positions, default
        all in order); T is ``width``, default the largest of their bags. A training batch pads
        only its own slides (to the cohort's width, so it equals a slice of the whole padding)."""
        counts, starts = self._layout
        chosen = torch.arange(self.n_slides) if slides is None else slides.cpu()
        take = counts[chosen]
        if width is None:
            width = int(take.max()) if len(chosen) else 0
        batch_pos = torch.repeat_interleave(torch.arange(len(chosen)), take)
        pos = torch.arange(int(take.sum())) - (torch.cumsum(take, 0) - take)[batch_pos]
        out = self.x.new_zeros(len(chosen), width, self.dim)
        mask = torch.zeros(len(chosen), width, dtype=torch.bool)
        out[batch_pos, pos] = self.x[starts[chosen][batch_pos] + pos]
        mask[batch_pos, pos] = True
        return out, mask

    def largest_bag(self) -> int:
        return int(self._layout[0].max()) if self.n_slides else 0

    @cached_property
    def _layout(self) -> tuple[Tensor, Tensor]:
        """Tiles per slide and each slide's first row, computed once (training pads a batch of
        slides every step); ``slide`` is never changed in place, and ``with_x`` makes new bags."""
        counts = torch.bincount(self.slide, minlength=self.n_slides)
        return counts, torch.cumsum(counts, 0) - counts

    def slide_means(self, values: Tensor | None = None) -> Tensor:
        """Per-slide mean of tile rows (of ``values`` when given, else of ``x``)."""
        values = self.x if values is None else values
        sums = values.new_zeros(self.n_slides, values.shape[1]).index_add_(0, self.slide, values)
        counts = torch.bincount(self.slide, minlength=self.n_slides).clamp_min(1)
        return sums / counts[:, None].to(values.dtype)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_tiles(
        cls,
        x: np.ndarray | Tensor,
        index: pd.DataFrame,
        label: str,
        site: str,
        max_tiles_per_slide: int | None = None,
        seed: int = 0,
        extra: tuple[str, ...] = (),
    ) -> Bags:
        """Bags from a tile matrix and its per-tile index (FeatureStore.index() layout).

        ``index`` needs slide_id, patient_id, split and the ``label`` and ``site`` columns.
        At most ``max_tiles_per_slide`` tiles per slide are kept (a seeded draw).
        """
        needed = [SLIDE_ID, PATIENT_ID, SPLIT, label, site, *extra]
        missing = [c for c in needed if c not in index.columns]
        if missing:
            raise StageError(
                f"tile index lacks column(s) {missing}. Fix: add them to the cohort manifest "
                "or set the label/site column names in the config."
            )
        if len(index) != len(x):
            raise StageError(f"tile index has {len(index)} rows but the matrix has {len(x)}")
        rows = _sample_rows(index[SLIDE_ID].to_numpy(), max_tiles_per_slide, seed)
        tiles = index.iloc[rows].reset_index(drop=True)
        slides = tiles.drop_duplicates(SLIDE_ID).reset_index(drop=True)
        labels = slides[label].astype(str)
        if labels.isna().any() or (slides[label].isna()).any():
            raise StageError(f"some slides have no value in label column {label!r}. Fix: fill it.")
        classes = tuple(sorted(labels.unique()))
        pos = pd.Series(np.arange(len(slides)), index=slides[SLIDE_ID])
        if isinstance(x, Tensor):
            x_rows = np.asarray(x[torch.from_numpy(rows)])
        elif len(rows) == len(x) and bool(np.all(rows == np.arange(len(x)))):
            x_rows = np.asarray(x)  # every row in order (load_run_bags sampled): no second copy
        else:
            x_rows = np.asarray(x[rows])
        return cls(
            x=torch.as_tensor(x_rows, dtype=torch.float32),
            slide=torch.from_numpy(pos.loc[tiles[SLIDE_ID]].to_numpy().astype(np.int64)),
            y=torch.tensor([classes.index(v) for v in labels], dtype=torch.long),
            site=slides[site].astype(str).to_numpy(),
            slide_ids=slides[SLIDE_ID].astype(str).to_numpy(),
            patient=slides[PATIENT_ID].astype(str).to_numpy(),
            split=slides[SPLIT].astype(str).to_numpy(),
            classes=classes,
            meta={c: slides[c].astype(str).to_numpy() for c in extra},
        )


def _sample_rows(slide_ids: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """Row numbers grouped by slide (first-seen order), at most ``cap`` per slide, sorted within."""
    codes, first = pd.factorize(slide_ids)
    del first
    rng = np.random.default_rng(seed)
    order = np.argsort(codes, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(codes))[:-1])
    kept = []
    for g in groups:
        if cap is not None and len(g) > cap:
            g = np.sort(rng.choice(g, size=cap, replace=False))
        kept.append(g)
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def capped_rows(counts: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """The rows ``Bags.from_tiles`` keeps, for slides stored one after the other with ``counts``
    tiles each: the same seeded draw, computed from the counts alone (no per-tile index)."""
    rng = np.random.default_rng(seed)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    kept = []
    for start, n in zip(starts, counts, strict=True):
        local = np.arange(n, dtype=np.int64)
        if cap is not None and n > cap:
            local = np.sort(rng.choice(local, size=cap, replace=False))
        kept.append(start + local)
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def per_slide_cap(n_slides: int, max_tiles_per_slide: int, max_tiles: int | None) -> int:
    """Tiles per slide so that the bags hold at most ``max_tiles`` tiles in all."""
    if max_tiles is None or n_slides == 0:
        return max_tiles_per_slide
    return max(1, min(max_tiles_per_slide, max_tiles // n_slides))


def concat_bags(parts: list[Bags]) -> Bags:
    """Slides of several bags one after the other (same classes and metadata columns)."""
    offsets = np.cumsum([0] + [p.n_slides for p in parts[:-1]])
    return Bags(
        x=torch.cat([p.x for p in parts]),
        slide=torch.cat([p.slide + int(o) for p, o in zip(parts, offsets, strict=True)]),
        y=torch.cat([p.y for p in parts]),
        site=np.concatenate([p.site for p in parts]),
        slide_ids=np.concatenate([p.slide_ids for p in parts]),
        patient=np.concatenate([p.patient for p in parts]),
        split=np.concatenate([p.split for p in parts]),
        classes=parts[0].classes,
        meta={k: np.concatenate([p.meta[k] for p in parts]) for k in parts[0].meta},
    )
