"""SAE metrics against independent computations, planted-feature recovery, and the controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pathosae.config import SAEConfig
from pathosae.sae import build_sae, evaluate_sae, fvu, train_sae
from pathosae.sae.controls import (
    concept_coverage,
    match_decoders,
    matched_cosines,
    permute_per_dimension,
    unit_aurocs,
)


def test_fvu_matches_torch_var_on_non_centred_data():
    torch.manual_seed(0)
    # Far from zero and a different mean per dimension.
    x = torch.randn(500, 16) * torch.linspace(0.5, 3, 16) + torch.linspace(-20, 20, 16)
    recon = x + 0.3 * torch.randn_like(x)
    expected = ((x - recon) ** 2).sum() / (torch.var(x, dim=0, unbiased=False).sum() * len(x))
    assert torch.allclose(fvu(x, recon), expected.double(), rtol=1e-10)
    around_zero = ((x - recon) ** 2).sum() / (x**2).sum()
    assert fvu(x, recon) > 20 * around_zero  # the zero-centred variant would be badly wrong
    scalar_mean = ((x - recon) ** 2).sum() / ((x - x.mean()) ** 2).sum()
    assert not torch.allclose(fvu(x, recon), scalar_mean.double(), rtol=0.05)


def test_streamed_metrics_match_one_shot():
    torch.manual_seed(1)
    sae = build_sae("topk", d_in=24, d_sae=48, k=5).eval()
    with torch.no_grad():
        sae.b_dec.fill_(3.0)
    x = torch.randn(1000, 24) + 3.0
    metrics = evaluate_sae(sae, x, batch_size=128)
    with torch.no_grad():
        z, recon = sae(x)
    assert metrics["fvu"] == pytest.approx(float(fvu(x, recon)), rel=1e-9)
    assert metrics["l0"] == pytest.approx(float((z != 0).sum(1).float().mean()))
    cos = torch.nn.functional.cosine_similarity(x, recon, dim=1).mean()
    assert metrics["cosine"] == pytest.approx(float(cos), rel=1e-5)
    freq = (z > 0).float().mean(0)
    assert metrics["dead_fraction"] == pytest.approx(float((freq == 0).float().mean()))
    assert metrics["dense_fraction"] == pytest.approx(float((freq > 0.1).float().mean()))


def planted_sparse(n: int, d: int, m: int, active: int, seed: int):
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((m, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = np.argsort(rng.random((n, m)), axis=1)[:, :active]
    coef = np.zeros((n, m))
    np.put_along_axis(coef, idx, rng.exponential(1.0, (n, active)) + 0.2, axis=1)
    x = coef @ atoms + 1.0 + 0.01 * rng.standard_normal((n, d))  # non-zero mean on purpose
    return x.astype(np.float32), atoms.astype(np.float32)


@pytest.mark.slow
def test_topk_recovers_planted_dictionary():
    """x = sum of a few of M known unit directions: most atoms must come back with cos > 0.9."""
    x, atoms = planted_sparse(n=20_000, d=48, m=64, active=3, seed=0)
    cfg = SAEConfig(d_sae=96, k=3, batch_size=256, n_samples=400_000, lr=2e-3,
                    dead_window=5_000, init_samples=4_000)
    sae = train_sae(x, cfg, architecture="topk")
    cos = matched_cosines(sae.W_dec, torch.from_numpy(atoms))
    assert (cos > 0.9).mean() >= 0.8, np.sort(cos)[:10]
    # A random dictionary of the same size matches far worse: the test can fail.
    random = matched_cosines(torch.randn(96, 48), torch.from_numpy(atoms))
    assert (random > 0.9).mean() == 0


def test_hungarian_seed_stability_detects_permuted_copy():
    torch.manual_seed(0)
    w = torch.randn(50, 20)
    same = match_decoders(w, -w[torch.randperm(50)])
    assert same["mean_cosine"] == pytest.approx(1.0)
    other = match_decoders(w, torch.randn(50, 20))
    assert other["fraction_above_0.9"] == 0 and other["mean_cosine"] < 0.6


def test_unit_aurocs_match_sklearn():
    rng = np.random.default_rng(0)
    codes = np.maximum(rng.standard_normal((300, 8)), 0)  # many ties at zero
    labels = rng.random(300) < 0.3
    codes[:, 2] += 2 * labels
    codes[:, 5] = np.round(codes[:, 5], 1)  # ties among the non-zero values
    codes[:, 6] -= np.maximum(rng.standard_normal(300), 0)  # negatives below the zeros
    codes[:, 7] = 0.0  # a dead unit
    expected = [roc_auc_score(labels, codes[:, j]) for j in range(8)]
    assert np.allclose(unit_aurocs(codes, labels), expected)


def test_concept_coverage_with_null():
    rng = np.random.default_rng(0)
    slides = np.repeat(np.arange(20), 50)
    site = slides % 2 == 0  # slide-level concept
    codes = np.abs(rng.standard_normal((1000, 30)))
    codes[:, 4] = site * 3 + rng.random(1000)
    out = concept_coverage(codes, {"site=a": site}, groups=slides.astype(str), seed=0)["site=a"]
    assert out["best_unit"] == 4 and out["best_auroc"] == pytest.approx(1.0)
    assert out["n_units_above_0.9"] == 1
    assert out["null_best_auroc"] < 0.99


def test_permutation_nulls_keep_marginals_and_break_structure():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((400, 1))
    x = np.hstack([base, base + 0.1 * rng.standard_normal((400, 1))]).astype(np.float32)
    slides = np.repeat(np.arange(4), 100)
    x[:, 0] += slides  # a slide-level shift
    between = permute_per_dimension(x, 0)
    within = permute_per_dimension(x, 0, groups=slides)
    for null in (between, within):
        assert np.allclose(np.sort(null, axis=0), np.sort(x, axis=0))
    assert abs(np.corrcoef(between.T)[0, 1]) < 0.2 < np.corrcoef(x.T)[0, 1]
    for s in range(4):  # within-slide: each slide keeps its own values per dimension
        rows = slides == s
        assert np.allclose(np.sort(within[rows], axis=0), np.sort(x[rows], axis=0))


def _reference_permutation(x: np.ndarray, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """One ``rng.permutation`` per column (per group in sorted order), column by column."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    if groups is None:
        for j in range(x.shape[1]):
            out[:, j] = x[rng.permutation(len(x)), j]
        return out
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        for j in range(x.shape[1]):
            out[rows, j] = x[rows[rng.permutation(len(rows))], j]
    return out


@pytest.mark.parametrize("grouped", [False, True])
def test_blocked_permutation_equals_the_column_by_column_draws(grouped: bool):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 150)).astype(np.float32)  # more columns than one block
    groups = rng.integers(0, 7, 300) if grouped else None
    expected = _reference_permutation(x, 5, groups)
    np.testing.assert_array_equal(permute_per_dimension(x, 5, groups), expected)
    own = x.copy()  # in place: the same draws, written over the caller's copy
    assert permute_per_dimension(own, 5, groups, overwrite=True) is own
    np.testing.assert_array_equal(own, expected)


@pytest.mark.parametrize("overwrite", [False, True])
def test_column_ranks_over_blocks_equal_scipy(monkeypatch: pytest.MonkeyPatch, overwrite: bool):
    from scipy.stats import rankdata

    from pathosae.sae import controls

    monkeypatch.setattr(controls, "RANK_BLOCK", 3)  # 10 columns: blocks of 3, 3, 3 and 1
    rng = np.random.default_rng(1)
    codes = np.maximum(rng.standard_normal((200, 10)), 0).astype(np.float32)
    codes[:, 4] = np.round(codes[:, 4], 1) - np.maximum(rng.standard_normal(200), 0)
    expected = rankdata(codes, axis=0).astype(np.float32)
    given = codes.copy()
    ranks = controls.column_ranks(given, overwrite=overwrite)
    np.testing.assert_allclose(ranks, expected, rtol=1e-6)
    assert (ranks is given) == overwrite  # in place only when asked
    if not overwrite:
        np.testing.assert_array_equal(given, codes)
