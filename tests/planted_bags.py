"""Bags of tiles with a planted label and site direction, shared by the SAE-ception tests."""

from __future__ import annotations

import numpy as np
import torch

from pathosae.downstream import Bags


def planted_bags(n_slides: int, seed: int, split: str, corr: float, tiles: int = 8,
                 dim: int = 8) -> Bags:
    """x = biology direction·label + site direction·site + noise, per tile; the site equals the
    label for a fraction ``corr`` of the slides."""
    g = np.random.default_rng(seed)
    bio, site_dir = np.eye(dim)[0] * 1.0, np.eye(dim)[1] * 2.0
    y = g.integers(0, 2, n_slides)
    site = np.where(g.random(n_slides) < corr, y, 1 - y)
    x = (bio * y[:, None] + site_dir * site[:, None])[:, None, :] + g.normal(size=(n_slides, tiles, dim))
    return Bags(
        x=torch.tensor(x.reshape(-1, dim), dtype=torch.float32),
        slide=torch.arange(n_slides).repeat_interleave(tiles),
        y=torch.tensor(y), site=np.array(["A", "B"])[site],
        slide_ids=np.array([f"{split}{i}" for i in range(n_slides)]),
        patient=np.array([f"{split}{i}" for i in range(n_slides)]),
        split=np.array([split] * n_slides), classes=("0", "1"),
    )
