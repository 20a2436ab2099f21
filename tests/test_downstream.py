"""Downstream adapter + attention-MIL: bags, deterministic training, metrics, leakage probe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pathosae.downstream import (
    Bags,
    DownstreamConfig,
    predict_proba,
    site_leakage,
    task_metrics,
    train_downstream,
)
from pathosae.downstream.bags import concat_bags
from pathosae.errors import StageError


def _bags(n: int = 60, tiles: int = 6, dim: int = 5, seed: int = 0) -> Bags:
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    x = g.normal(size=(n, tiles, dim))
    x[:, : tiles // 2, 0] += 3.0 * y[:, None]  # half the tiles of a positive slide carry the signal
    return Bags(
        x=torch.tensor(x.reshape(-1, dim), dtype=torch.float32),
        slide=torch.arange(n).repeat_interleave(tiles), y=torch.tensor(y),
        site=np.array(["A", "B", "C"])[g.integers(0, 3, n)],
        slide_ids=np.array([f"s{i}" for i in range(n)]), patient=np.array([f"p{i}" for i in range(n)]),
        split=np.array(["train"] * n), classes=("neg", "pos"),
    )


def test_bags_padding_subset_and_means() -> None:
    bags = _bags(5, 3, 2)
    keep = np.array([True, False, True, False, True])
    sub = bags.subset(keep)
    assert sub.n_slides == 3 and sub.x.shape == (9, 2)
    assert torch.equal(sub.x[3:6], bags.x[6:9])
    padded, mask = concat_bags([sub, bags.subset(~keep)]).padded()
    assert padded.shape == (5, 3, 2) and bool(mask.all())
    assert torch.allclose(bags.slide_means()[1], bags.x[3:6].mean(0))


def test_from_tiles_caps_tiles_and_names_missing_columns() -> None:
    index = pd.DataFrame({
        "slide_id": ["a"] * 5 + ["b"] * 2, "patient_id": ["p"] * 5 + ["q"] * 2,
        "split": "train", "label": ["x"] * 5 + ["y"] * 2, "site": ["s1"] * 5 + ["s2"] * 2,
    })
    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    bags = Bags.from_tiles(x, index, "label", "site", max_tiles_per_slide=3, seed=0)
    assert bags.x.shape[0] == 5 and bags.classes == ("x", "y") and bags.y.tolist() == [0, 1]
    with pytest.raises(StageError, match="scanner"):
        Bags.from_tiles(x, index, "label", "scanner")


def test_training_is_deterministic_and_learns() -> None:
    bags = _bags()
    cfg = DownstreamConfig(epochs=25, hidden_dim=8, attention_dim=4, lr=1e-2)
    a = predict_proba(train_downstream(bags, cfg, seed=3), bags)
    b = predict_proba(train_downstream(bags, cfg, seed=3), bags)
    assert np.array_equal(a, b)
    assert task_metrics(bags.y.numpy(), a, bags.site)["bacc"] > 0.9


def test_task_metrics_per_site_and_worst() -> None:
    y = np.array([0, 1, 0, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.8, 0.2], [0.7, 0.3], [0.3, 0.7]])
    site = np.array(["A", "A", "B", "B", "C", "C"])
    m = task_metrics(y, proba, site)
    assert m["per_site_bacc"] == {"A": 1.0, "B": 0.0, "C": 1.0}
    assert m["worst_site_bacc"] == 0.0
    assert m["bacc"] == pytest.approx(2 / 3)


def test_site_leakage_detects_a_site_signal_inside_classes() -> None:
    g = np.random.default_rng(0)
    y = g.integers(0, 2, 200)
    site = np.array(["A", "B"])[g.integers(0, 2, 200)]
    x = g.normal(size=(200, 4))
    assert site_leakage(x, site, y) < 0.65
    x[:, 1] += 2.0 * (site == "A")
    assert site_leakage(x, site, y) > 0.8


def test_site_leakage_on_a_small_cohort_shrinks_the_folds() -> None:
    # three slides per site and class: five folds cannot stratify, three can
    y = np.repeat([0, 1], 6)
    site = np.tile(np.repeat(["A", "B"], 3), 2)
    x = np.random.default_rng(1).normal(size=(12, 3))
    x[:, 0] += 4.0 * (site == "A")
    assert site_leakage(x, site, y) >= 0.7  # chance is 0.5
    assert np.isnan(site_leakage(x, site, y, min_per_site=4))  # too few slides: NaN, no crash
