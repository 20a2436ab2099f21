"""Confounder directions: LEACE erasure, mean differences, probe weights, saving, baselines."""

from __future__ import annotations

import numpy as np
import pytest

from pathosae.confounders.baselines import (
    combat_train_apply,
    combat_train_apply_parts,
    he_stain_normaliser,
)
from pathosae.confounders.directions import (
    apply_eraser,
    eraser_arrays,
    fit_leace,
    load_directions,
    mean_difference_directions,
    one_hot,
    probe_weights,
    save_directions,
)
from pathosae.confounders.leakage import probe_leakage
from pathosae.errors import PathosaeError


def _planted(n: int = 300, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    site = np.repeat(["A", "B", "C"], n // 3)
    shift = {"A": 0.0, "B": 2.0, "C": -1.5}
    x = rng.normal(size=(n, d)) + np.array([shift[s] for s in site])[:, None] * direction
    return x, site, direction


def test_leace_erasure_leaves_probe_at_chance() -> None:
    x, site, _ = _planted()
    groups = np.arange(len(x))
    before = probe_leakage(x, site, groups, n_folds=5, seed=0)
    assert before is not None and before.auroc > 0.8
    eraser = fit_leace(x, site)
    erased = apply_eraser(eraser, x)
    after = probe_leakage(erased, site, groups, n_folds=5, seed=0)
    assert after is not None and after.auroc < 0.6 and after.balanced_accuracy < 0.45
    # the edit is small: directions orthogonal to the concept are kept
    assert np.linalg.norm(erased - x) / np.linalg.norm(x) < 0.6
    arrays = eraser_arrays(eraser)
    rebuilt = x - ((x - arrays["bias"]) @ arrays["proj_right"].T) @ arrays["proj_left"].T
    np.testing.assert_allclose(rebuilt, erased, atol=1e-4)


def test_mean_difference_recovers_planted_direction() -> None:
    x, site, direction = _planted(seed=1)
    dirs, levels = mean_difference_directions(x, site)
    assert levels == ["A", "B", "C"]
    assert abs(dirs[1] @ direction) > 0.95  # B moves along +direction
    assert dirs[2] @ direction < -0.9  # C moves against it
    single, _ = mean_difference_directions(x.astype(np.float32), site)  # float64 means of float32
    np.testing.assert_allclose(single, mean_difference_directions(
        x.astype(np.float32).astype(np.float64), site)[0], atol=1e-12)


def test_class_conditional_mean_difference_ignores_label_imbalance() -> None:
    rng = np.random.default_rng(2)
    n, d = 400, 8
    label = rng.choice(["t", "n"], n)
    # site B holds mostly tumour slides; the label shifts axis 0, the site shifts axis 1
    site = np.where(rng.random(n) < np.where(label == "t", 0.8, 0.2), "B", "A")
    x = rng.normal(size=(n, d)) * 0.3
    x[:, 0] += 3.0 * (label == "t")
    x[:, 1] += 1.0 * (site == "B")
    plain, _ = mean_difference_directions(x, site)
    conditional, _ = mean_difference_directions(x, site, condition=label)
    assert abs(plain[1, 0]) > 0.5  # the plain difference mixes in the label axis
    assert abs(conditional[1, 1]) > 0.95 and abs(conditional[1, 0]) < 0.2


def test_probe_weights_point_at_the_carrying_units() -> None:
    rng = np.random.default_rng(3)
    codes = rng.gamma(1.0, 1.0, size=(200, 30))
    site = np.repeat(["A", "B"], 100)
    codes[100:, 7] += 2.0
    weights, classes = probe_weights(codes, site)
    assert classes == ["A", "B"] and weights.shape == (1, 30)
    assert int(np.argmax(weights[0])) == 7


def test_save_and_load_directions(tmp_path) -> None:
    path = tmp_path / "confounders" / "directions.safetensors"
    save_directions(path, {"site.mean_difference": np.eye(3)}, {"variables": {"site": {}}})
    loaded = load_directions(path)
    np.testing.assert_allclose(loaded["site.mean_difference"], np.eye(3))
    assert path.with_suffix(".json").is_file()
    with pytest.raises(PathosaeError, match="pathosae confounders"):
        load_directions(tmp_path / "missing.safetensors")


def test_combat_train_to_test_reduces_site_leakage_and_keeps_label() -> None:
    rng = np.random.default_rng(4)
    n = 240
    site = np.tile(["A", "B", "C"], n // 3)
    label = rng.choice(["t", "n"], n)
    x = rng.normal(size=(n, 12))
    x += np.array([{"A": 0.0, "B": 1.5, "C": -1.0}[s] for s in site])[:, None]
    x[:, :3] += 1.5 * (label == "t")[:, None]
    train = rng.random(n) < 0.6
    harmonised = combat_train_apply(x, site, train, protect=label)
    test = ~train
    groups = np.arange(test.sum())
    raw = probe_leakage(x[test], site[test], groups, 5, 0)
    fixed = probe_leakage(harmonised[test], site[test], groups, 5, 0)
    assert raw.auroc > 0.9 and fixed.auroc < 0.7
    kept = probe_leakage(harmonised[test], label[test], groups, 5, 0)
    assert kept.auroc > 0.8
    with pytest.raises(PathosaeError, match="no training slides"):
        combat_train_apply(x, np.where(test & (site == "C"), "D", site), train)


def test_stain_normaliser_maps_tiles_to_reference() -> None:
    normalise = he_stain_normaliser()
    tile = np.full((48, 48, 3), 235, np.uint8)
    tile[8:40, 8:40] = [170, 80, 160]  # eosin-ish
    tile[16:28, 16:28] = [70, 50, 140]  # haematoxylin-ish
    out = normalise(tile)
    assert out.shape == tile.shape and out.dtype == np.uint8
    assert not np.array_equal(out, tile)
    blank = np.full((16, 16, 3), 255, np.uint8)
    np.testing.assert_array_equal(normalise(blank), blank)
    with pytest.raises(PathosaeError, match="uint8"):
        normalise(tile.astype(np.float32))


def test_leace_in_chunks_equals_one_pass() -> None:
    """The eraser fitted and applied a few rows at a time (running float64 statistics) is the
    one-pass eraser, and float32 input comes back float32."""
    import torch
    from concept_erasure import LeaceFitter

    x, site, _ = _planted(seed=2)
    whole = LeaceFitter.fit(torch.as_tensor(x), torch.as_tensor(one_hot(site)[0])).eraser
    chunked = fit_leace(x, site, chunk=7)
    expected = whole(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(apply_eraser(chunked, x, chunk=11), expected, atol=1e-9)
    single = apply_eraser(chunked, x.astype(np.float32), chunk=11)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, expected, atol=1e-4)


def test_combat_in_chunks_equals_one_pass_and_the_capped_fit_is_close() -> None:
    """The transform runs a few rows at a time, and rows sorted by label make chunks that hold
    one class only (their covariate dummies must not lose a column); the fit on a seeded
    sample of the training rows harmonises nearly as the fit on all of them."""
    rng = np.random.default_rng(5)
    n = 300
    label = np.sort(rng.choice(["n", "t"], n))  # chunks of 16 rows: one class each, mostly
    site = rng.choice(["A", "B", "C"], n)
    x = rng.normal(size=(n, 6)) + np.array([{"A": 0.0, "B": 1.5, "C": -1.0}[s] for s in site])[:, None]
    x[:, :2] += 1.5 * (label == "t")[:, None]
    train = rng.random(n) < 0.7
    whole = combat_train_apply(x, site, train, protect=label, chunk=n)
    np.testing.assert_allclose(combat_train_apply(x, site, train, protect=label, chunk=16),
                               whole, atol=1e-10)
    single = combat_train_apply(x.astype(np.float32), site, train, protect=label, chunk=16)
    assert single.dtype == np.float32
    capped = combat_train_apply(x, site, train, protect=label, fit_max_rows=150, chunk=16)
    assert not np.allclose(capped, whole)  # a different fit sample ...
    assert np.abs(capped - whole).mean() < 0.2 * np.abs(x - whole).mean()  # ... close to the full fit
    # Row blocks harmonised separately (no concatenated copy) equal the one matrix, chunks
    # straddling the blocks' edges included.
    blocks = combat_train_apply_parts([x[:100], x[100:130], x[130:]], site, train, protect=label,
                                      chunk=16)
    assert [len(b) for b in blocks] == [100, 30, 170]
    np.testing.assert_allclose(np.concatenate(blocks), whole, atol=1e-10)
