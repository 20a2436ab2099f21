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
from pathosae.downstream.metrics import TileRows, site_leakage_report
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


def test_padding_a_batch_of_slides_equals_slicing_the_whole_padding() -> None:
    """Training pads each batch's slides only (to the cohort's width): the same tensors as
    slicing one padding of every slide, for bags of unequal sizes and any slide order."""
    g = np.random.default_rng(4)
    sizes = np.array([3, 1, 5, 2, 4])
    whole = Bags(
        x=torch.from_numpy(g.normal(size=(int(sizes.sum()), 2)).astype(np.float32)),
        slide=torch.arange(5).repeat_interleave(torch.from_numpy(sizes)), y=torch.zeros(5).long(),
        site=np.array(["A"] * 5), slide_ids=np.array([f"s{i}" for i in range(5)]),
        patient=np.array([f"p{i}" for i in range(5)]), split=np.array(["train"] * 5),
        classes=("neg", "pos"),
    )
    full, full_mask = whole.padded()
    assert whole.largest_bag() == 5 and full.shape == (5, 5, 2)
    for idx in ([3, 0], [4, 2, 1], [1]):
        batch, mask = whole.padded(torch.tensor(idx), whole.largest_bag())
        assert torch.equal(batch, full[idx]) and torch.equal(mask, full_mask[idx])
    own, own_mask = whole.padded(torch.tensor([1, 3]))  # default width: the batch's largest bag
    assert own.shape == (2, 2, 2) and torch.equal(own_mask.sum(1), torch.tensor([1, 2]))


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
    report = site_leakage_report(x, site, y, min_per_site=4)  # too few per class: pooled probe
    assert report.estimator == "slide_class_centred" and report.value >= 0.7


def _tiny_cohort(per_cell: int, tiles: int = 10, site_effect: float = 3.0, seed: int = 0):
    """Two classes × two sites, ``per_cell`` slides each; tiles carry a site shift on dim 0."""
    g = np.random.default_rng(seed)
    y = np.repeat([0, 1], 2 * per_cell)
    site = np.tile(np.repeat(["A", "B"], per_cell), 2)
    n = len(y)
    tiles_x = g.normal(size=(n, tiles, 4))
    tiles_x[:, :, 0] += site_effect * (site == "A")[:, None]
    tiles_x[:, :, 1] += 2.0 * y[:, None]
    return tiles_x, site, y


def test_leakage_falls_back_to_tiles_grouped_by_slide() -> None:
    tiles_x, site, y = _tiny_cohort(per_cell=2)
    slide_x = tiles_x.mean(1)
    tile_x, tile_slide = tiles_x.reshape(-1, 4), np.repeat(np.arange(len(y)), tiles_x.shape[1])
    assert site_leakage_report(slide_x, site, y).estimator != "slide_within_class"
    report = site_leakage_report(slide_x, site, y, tiles=TileRows(tile_x, tile_slide))
    assert report.estimator == "tile_within_class" and report.value > 0.9
    assert report.columns()["site_leakage_estimator"] == "tile_within_class"
    # Without tiles the class-centred slide probe answers.
    assert site_leakage_report(slide_x, site, y).estimator == "slide_class_centred"


def test_tile_fallback_does_not_read_the_site_off_the_slide_identity() -> None:
    # No site effect, but every slide has a strong offset of its own: folds that split a slide's
    # tiles between train and test would find the site through the slide (near 1.0).
    tiles_x, site, y = _tiny_cohort(per_cell=6, tiles=20, site_effect=0.0, seed=2)
    tiles_x += np.random.default_rng(3).normal(scale=5.0, size=(len(y), 1, 4))
    tile_x, tile_slide = tiles_x.reshape(-1, 4), np.repeat(np.arange(len(y)), 20)
    report = site_leakage_report(tiles_x.mean(1), site, y, min_per_site=7,
                                 tiles=TileRows(tile_x, tile_slide))
    assert report.estimator == "tile_within_class"
    assert report.value < 0.75  # chance is 0.5


def test_one_slide_per_site_and_class_still_gets_the_pooled_number() -> None:
    tiles_x, site, y = _tiny_cohort(per_cell=1)
    report = site_leakage_report(tiles_x.mean(1), site, y)
    assert report.estimator == "slide_class_centred" and np.isfinite(report.value)


def test_leakage_is_nan_only_when_nothing_can_be_fitted() -> None:
    tiles_x, _, y = _tiny_cohort(per_cell=3)
    confounded = np.where(y == 1, "A", "B")  # every class from one site
    report = site_leakage_report(tiles_x.mean(1), confounded, y)
    assert np.isnan(report.value) and report.estimator is None
    assert "single site" in report.reason
    one_site = site_leakage_report(tiles_x.mean(1), np.full(len(y), "A"), y)
    assert np.isnan(one_site.value) and "one site" in one_site.reason


def test_site_separation_is_zero_without_site_means_and_grows_with_them() -> None:
    from pathosae.downstream.metrics import site_separation

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    site = np.tile(np.repeat(["a", "b"], 10), 2)
    x = rng.normal(size=(40, 8))
    for c in (0, 1):  # remove every site's mean within each class: nothing between sites
        for s in ("a", "b"):
            cell = (y == c) & (site == s)
            x[cell] -= x[cell].mean(0)
    assert site_separation(x, site, y) < 1e-12
    shifted = x + (site == "a")[:, None] * 1.0
    assert 0.15 < site_separation(shifted, site, y) < 0.3  # 40 between of ~185 per class
    assert site_separation(shifted + y[:, None] * 5.0, site, y) == pytest.approx(
        site_separation(shifted, site, y))  # class offsets are not site
