"""A tensor-level synthetic cohort with a planted label–site confounder (no images).

Each slide has a label (low/high) and a site (A/B/C). Tiles are one of five phenotypes, each with
its own direction; "high" slides hold more of the tumour phenotype (the biology). Every tile of a
slide also carries its site's shift (the confounder, stronger than the biology) plus slide jitter
and noise. In train/val a label is sent to its own site with probability ``confounding``; in the
shifted test split each label is sent to the other label's site with that probability.
"""

from __future__ import annotations

import numpy as np
import torch

from pathosae.downstream import Bags


def make_tensor_cohort(
    n_slides: dict[str, int] | None = None,
    tiles: int = 24,
    dim: int = 32,
    confounding: float = 0.9,
    site_strength: float = 1.0,
    tumour_fraction: tuple[float, float] = (0.25, 0.45),
    noise: float = 0.6,
    seed: int = 0,
) -> Bags:
    n_slides = n_slides or {"train": 400, "val": 150, "test": 200}
    rng = np.random.default_rng(seed)
    phenotypes = rng.normal(size=(5, dim)) / np.sqrt(dim) * 3.0
    site_shift = rng.normal(size=(3, dim)) / np.sqrt(dim) * 3.0 * site_strength
    xs, slide, ys, sites, splits = [], [], [], [], []
    pos = 0
    for split, n in n_slides.items():
        for _ in range(n):
            y = int(rng.random() < 0.5)
            preferred = y if split != "test" else 1 - y
            site = preferred if rng.random() < confounding else int(rng.integers(3))
            p_tumour = tumour_fraction[y]
            others = (1 - p_tumour) / 4
            phen = rng.choice(5, size=tiles, p=[p_tumour, others, others, others, others])
            x = phenotypes[phen] * (1 + 0.2 * rng.normal(size=(tiles, 1)))
            x += site_shift[site] * (1 + 0.1 * rng.normal())
            x += 0.3 * rng.normal(size=dim) + noise * rng.normal(size=(tiles, dim))
            xs.append(x)
            slide += [pos] * tiles
            ys.append(y)
            sites.append("ABC"[site])
            splits.append(split)
            pos += 1
    n = len(ys)
    return Bags(
        x=torch.tensor(np.concatenate(xs), dtype=torch.float32),
        slide=torch.tensor(slide, dtype=torch.long),
        y=torch.tensor(ys, dtype=torch.long),
        site=np.array(sites),
        slide_ids=np.array([f"s{i:04d}" for i in range(n)]),
        patient=np.array([f"p{i:04d}" for i in range(n)]),
        split=np.array(splits),
        classes=("high", "low")[::-1],
    )
