"""Confounder-aware SAEs (``topk_offsets``, ``topk_reserved``) on a planted confounder, and their
level vocabularies, unknown levels, edits and losses.

The planted cohort: sparse non-negative "biology" atoms, a label atom, and per site a dense shift
(every row of the site moves by the same vector) plus, for the reserved-latents test, two sparse
site atoms that fire on 30% of the site's rows. Site and label are independent, so a site probe's
chance level is 1 / n_sites (balanced accuracy).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pathosae.config import SAEConfig
from pathosae.errors import PathosaeError
from pathosae.sae import evaluate_sae, load_sae, save_sae, train_sae
from pathosae.sae.conditional import TopKOffsetsSAE
from pathosae.sae.levels import Conditions, build_levels, encode_levels, normalise_levels
from pathosae.sae.metrics import encode_rows
from pathosae.sae.reserved import TopKReservedSAE, cross_covariance_penalty
from pathosae.sae.sparse import SparseCodes, mask_codes, offsets_from_rows
from pathosae.sae.training import build_model

D_IN, D_SAE, K, N_SITES = 32, 128, 8, 4
CHANCE = 1 / N_SITES
SITES = ["site_a", "site_b", "site_c", "site_d"]


def planted_sites(n: int = 4000, site_atoms: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    atoms = _unit(rng.standard_normal((48, D_IN)))
    site = rng.integers(0, N_SITES, n)
    label = rng.integers(0, 2, n)
    codes = np.zeros((n, len(atoms)))
    for i in range(n):
        chosen = rng.choice(len(atoms), size=3, replace=False)
        codes[i, chosen] = rng.exponential(1.0, size=3) + 0.5
    x = codes @ atoms
    x += label[:, None] * (rng.exponential(1.0, n) + 0.5)[:, None] * _unit(rng.standard_normal(D_IN))
    shifts = 1.5 * _unit(rng.standard_normal((N_SITES, D_IN)))
    x += shifts[site]
    if site_atoms:
        per_site = _unit(rng.standard_normal((N_SITES, site_atoms, D_IN)))
        amplitude = (rng.exponential(1.0, (n, site_atoms)) + 0.5) * (rng.random((n, site_atoms)) < 0.3)
        x += np.einsum("ns,nsd->nd", amplitude, per_site[site])
    x += 0.5 + 0.01 * rng.standard_normal((n, D_IN))
    return {"x": x.astype(np.float32), "site": site, "label": label, "shifts": shifts}


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def cfg(steps: int) -> SAEConfig:
    return SAEConfig(d_sae=D_SAE, k=K, batch_size=256, n_samples=256 * steps, dead_window=2000,
                     init_samples=2000, lr=3e-3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch and one BLAS thread: on a shared small CPU, OpenMP threads that wait on each other
    make these small trainings and probes ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def site_probe(features: np.ndarray, target: np.ndarray) -> float:
    """5-fold cross-validated balanced accuracy of a linear (logistic) probe."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(probe, features, target, cv=folds, scoring="balanced_accuracy").mean())


def site_frame(site: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"site": [SITES[s] for s in site]})


# ---- conditional offsets ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def offsets_run():
    data = planted_sites()
    conditions = Conditions.from_frame(site_frame(data["site"]), ["site"])
    models = {arch: train_sae(data["x"], cfg(300), architecture=arch, conditions=conditions,
                              labels=data["label"]) for arch in ("topk", "topk_offsets")}
    return data, conditions, models


def test_offsets_absorb_the_planted_site_shift(offsets_run):
    data, conditions, models = offsets_run
    sae = models["topk_offsets"]
    assert isinstance(sae, TopKOffsetsSAE)
    offsets = sae.offsets.detach().numpy()
    learned = _unit(offsets[1:] - offsets[0])
    planted = _unit(data["shifts"][1:] - data["shifts"][0])
    cosines = (learned * planted).sum(1)
    x = torch.from_numpy(data["x"])
    with torch.no_grad():
        codes_offsets = sae.encode(x, conditions.codes).numpy()
        codes_plain = models["topk"].encode(x).numpy()
    probe_offsets = site_probe(codes_offsets, data["site"])
    probe_plain = site_probe(codes_plain, data["site"])
    print(f"offset-difference cosines {np.round(cosines, 3)}; site probe on codes: "
          f"topk_offsets {probe_offsets:.3f}, topk {probe_plain:.3f} (chance {CHANCE})")
    assert cosines.min() >= 0.9
    assert probe_offsets <= CHANCE + 0.1
    assert probe_plain >= CHANCE + 0.4


def test_offsets_metrics_with_and_without_conditions(offsets_run):
    data, conditions, models = offsets_run
    sae = models["topk_offsets"]
    own = evaluate_sae(sae, data["x"], conditions=conditions.codes)
    mean = evaluate_sae(sae, data["x"])  # every row unknown: the mean offset
    assert own["fvu"] < 0.5 * mean["fvu"]  # the site shift is reconstructed only with own offsets
    assert own["l0"] == K
    encoded = encode_rows(sae, data["x"][:100], batch_size=32, conditions=conditions.codes[:100])
    with torch.no_grad():
        direct = sae.encode(torch.from_numpy(data["x"][:100]), conditions.codes[:100])
    assert torch.allclose(encoded, direct)
    with pytest.raises(PathosaeError, match="rows"):
        evaluate_sae(sae, data["x"], conditions=conditions.codes[:10])


def test_offsets_edit_uses_the_training_weighted_mean_offset():
    sae = TopKOffsetsSAE(D_IN, 64, k=4, levels={"site": ["a", "b", "c"], "scanner": ["x", "y"]})
    with torch.no_grad():
        sae.offsets.normal_()
        sae.level_counts.copy_(torch.tensor([3, 1, 0, 1, 1]))  # site c: no training rows
    site_mean = (3 * sae.offsets[0] + sae.offsets[1]) / 4
    scanner_mean = (sae.offsets[3] + sae.offsets[4]) / 2
    assert torch.allclose(sae.mean_offset(), site_mean + scanner_mean, atol=1e-6)
    frame = pd.DataFrame({"site": ["a", "c", "zz", None], "scanner": ["y", "x", 3.0, "x"]})
    codes = sae.level_codes(frame)
    assert codes.tolist() == [[0, 1], [2, 0], [-1, -1], [-1, 0]]
    assert sae.unseen_levels(frame) == {"site": ["c", "zz"], "scanner": ["3"]}
    unknown = sae.unknown_rows(codes)
    assert unknown.tolist() == [[False, False], [True, False], [True, True], [True, False]]
    shift = sae.row_offsets(torch.from_numpy(codes))
    assert torch.allclose(shift[0], sae.offsets[0] + sae.offsets[4])
    assert torch.allclose(shift[1], site_mean + sae.offsets[3], atol=1e-6)  # unseen level c
    assert torch.allclose(shift[2], site_mean + scanner_mean, atol=1e-6)
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        z, edited = sae.edit(x, codes)
        assert torch.equal(z, sae.encode(x, codes))
        expected = torch.addmm(sae.b_dec, z, sae.W_dec) + sae.mean_offset()
    assert torch.allclose(edited, expected, atol=1e-5)


# ---- reserved latents ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reserved_run():
    data = planted_sites(site_atoms=2, seed=1)
    conditions = Conditions.from_frame(site_frame(data["site"]), ["site"])
    sae = train_sae(data["x"], cfg(400), architecture="topk_reserved", conditions=conditions,
                    labels=data["label"])
    return data, conditions, sae


def test_reserved_block_carries_the_site_and_the_free_latents_do_not(reserved_run):
    data, _, sae = reserved_run
    assert isinstance(sae, TopKReservedSAE)
    x = torch.from_numpy(data["x"])
    block = sae.reserved_slices()["site"]
    assert (block.start, block.stop) == (0, 2 * N_SITES)
    with torch.no_grad():
        z = sae.encode(x)
        predicted = sae.predict_levels(x)[:, 0].numpy()
        _, edited = sae.edit(x)
    accuracy = float((predicted == data["site"]).mean())
    free_probe = site_probe(z[:, sae.n_reserved :].numpy(), data["site"])
    edited_probe = site_probe(edited.numpy(), data["site"])
    # The block's decoder atoms span the planted site shifts (their differences from the mean).
    atoms = sae.W_dec[block].detach().double().numpy()
    basis = np.linalg.qr(atoms.T)[0]
    planted = data["shifts"] - data["shifts"].mean(0)
    captured = np.linalg.norm(planted @ basis, axis=1) / np.linalg.norm(planted, axis=1)
    print(f"block accuracy {accuracy:.3f}; free-latent site probe {free_probe:.3f}; edited "
          f"reconstruction site probe {edited_probe:.3f} (chance {CHANCE}); share of each "
          f"planted shift in the block's span {np.round(captured, 3)}")
    assert accuracy >= 0.9
    assert free_probe <= CHANCE + 0.1
    assert edited_probe <= CHANCE + 0.1
    assert captured.min() >= 0.85  # 0.925-0.961 here; 0.911 at worst over data seeds 1-4


def test_offsets_and_reserved_block_split_the_dense_shift_and_the_site_atoms():
    """Both mechanisms at once: the offsets take the planted dense shifts, the block the rest
    (sparse site atoms), the free latents lose the site, and the edit removes it."""
    from pathosae.sae.offsets_reserved import TopKOffsetsReservedSAE

    data = planted_sites(site_atoms=2, seed=1)
    conditions = Conditions.from_frame(site_frame(data["site"]), ["site"])
    sae = train_sae(data["x"], cfg(400), architecture="topk_offsets_reserved",
                    conditions=conditions, labels=data["label"])
    assert isinstance(sae, TopKOffsetsReservedSAE)
    x = torch.from_numpy(data["x"])
    with torch.no_grad():
        z = sae.encode(x, conditions.codes)
        z_edit, edited = sae.edit(x, conditions.codes)
        fvu = evaluate_sae(sae, data["x"], conditions=conditions.codes)["fvu"]
    free_probe = site_probe(z[:, sae.n_reserved :].numpy(), data["site"])
    edited_probe = site_probe(edited.numpy(), data["site"])
    # How the dense shift splits between the offsets and the block is not identified (both are
    # free to carry it); what matters is that together they hold the site and the edit drops both.
    print(f"FVU {fvu:.3f}; free-latent site probe "
          f"{free_probe:.3f}; edited reconstruction site probe {edited_probe:.3f} (chance {CHANCE})")
    assert not z_edit[:, : sae.n_reserved].any()
    assert fvu < 0.2
    assert free_probe <= CHANCE + 0.1
    assert edited_probe <= CHANCE + 0.1


def test_reserved_edit_ablates_only_the_block(reserved_run):
    data, _, sae = reserved_run
    x = torch.from_numpy(data["x"][:64])
    with torch.no_grad():
        z = sae.encode(x)
        edited_z, edited = sae.edit(x)
        assert torch.equal(edited, sae.decode(edited_z))
    assert (edited_z[:, : sae.n_reserved] == 0).all()
    assert torch.equal(edited_z[:, sae.n_reserved :], z[:, sae.n_reserved :])
    assert (z[:, : sae.n_reserved] > 0).any()
    assert sae.reserved_units() == {"site": list(range(2 * N_SITES))}


def test_independence_penalty_is_within_label():
    """A latent that follows the label only, in a cohort where the label follows the site, is not
    penalised when the label is given, and is without it."""
    rng = np.random.default_rng(0)
    n = 400
    site = torch.from_numpy(rng.integers(0, 2, n))
    label = torch.where(torch.from_numpy(rng.random(n)) < 0.8, site, 1 - site)
    z = torch.stack([label.double() * 2.0, torch.from_numpy(rng.exponential(1.0, n))], dim=1)
    values, rows, cols = mask_codes(z, z != 0)
    codes = SparseCodes(values, rows, cols, offsets_from_rows(rows, n), n, 2)
    within = float(cross_covariance_penalty(codes, site, 2, label))
    plain = float(cross_covariance_penalty(codes, site, 2, None))
    assert abs(within) < 1e-3 < plain


def test_independence_penalty_matches_the_unbiased_dense_formula():
    torch.manual_seed(0)
    n, latents, n_levels = 30, 12, 3
    z = torch.relu(torch.randn(n, latents, dtype=torch.float64) - 0.5)
    column, label = torch.randint(-1, n_levels, (n,)), torch.randint(0, 2, (n,))
    values, rows, cols = mask_codes(z, z != 0)
    codes = SparseCodes(values, rows, cols, offsets_from_rows(rows, n), n, latents)
    known = column >= 0
    zk = z[known].clone()
    sk = torch.nn.functional.one_hot(column[known], n_levels).double()
    for group in label[known].unique():
        rows_g = label[known] == group
        zk[rows_g] -= zk[rows_g].mean(0)
        sk[rows_g] -= sk[rows_g].mean(0)
    gram = (zk @ zk.T) * (sk @ sk.T)
    m = len(zk)
    expected = (gram.sum() - gram.diagonal().sum()) / (m * (m - 1))
    assert torch.allclose(cross_covariance_penalty(codes, column, n_levels, label), expected)


def test_reserved_fold_keeps_the_read_out():
    sae = build_model(D_IN, cfg(1), "topk_reserved", levels={"site": SITES}).eval()
    with torch.no_grad():
        sae.b_enc.normal_()
        for head in sae.heads:
            head.bias.normal_()
    x, scale = torch.randn(50, D_IN), 2.5
    before = sae.predict_levels(x * scale)
    sae.fold_input_scale(scale)
    assert torch.equal(sae.predict_levels(x), before)


# ---- vocabularies, saving, errors ------------------------------------------------------------
@pytest.mark.parametrize("arch", ["topk_offsets", "topk_reserved", "topk_offsets_reserved"])
def test_level_vocabulary_is_saved_in_cfg_json(arch, tmp_path):
    frame = pd.DataFrame({"site": ["b", "a", "c", "a"] * 25, "scanner": [2.0, 1.0, np.nan, 1.0] * 25})
    conditions = Conditions.from_frame(frame, ["site", "scanner"])
    assert conditions.levels == {"site": ["a", "b", "c"], "scanner": ["1", "2"]}
    x = np.random.default_rng(0).standard_normal((100, D_IN)).astype(np.float32)
    sae = train_sae(x, cfg(3), architecture=arch, conditions=conditions)
    save_sae(sae, tmp_path)
    saved = json.loads((tmp_path / "cfg.json").read_text())
    assert saved["hparams"]["levels"] == [["site", ["a", "b", "c"]], ["scanner", ["1", "2"]]]
    loaded = load_sae(tmp_path)
    assert loaded.levels == conditions.levels and list(loaded.levels) == ["site", "scanner"]
    new = pd.DataFrame({"site": ["c", "d"], "scanner": [1, "2"]})
    assert loaded.level_codes(new).tolist() == [[2, 0], [-1, 1]]
    assert loaded.unseen_levels(new) == {"site": ["d"]}
    batch = torch.from_numpy(x[:20])
    with torch.no_grad():
        assert torch.equal(sae(batch, conditions.codes[:20])[1], loaded(batch, conditions.codes[:20])[1])


def test_levels_helpers():
    frame = pd.DataFrame({"site": [3, 1, None, 3], "scanner": ["x", "y", "x", None]})
    levels = build_levels(frame, ["site", "scanner"])
    assert levels == {"site": ["1", "3"], "scanner": ["x", "y"]}
    assert encode_levels(frame, levels).tolist() == [[1, 0], [0, 1], [-1, 0], [1, -1]]
    assert normalise_levels([["b", [1, 2]], ["a", ["x"]]]) == {"b": ["1", "2"], "a": ["x"]}
    with pytest.raises(PathosaeError, match="stain"):
        build_levels(frame, ["stain"])
    with pytest.raises(ValueError, match="distinct"):
        normalise_levels({"site": ["a", "a"]})
    unnamed = Conditions.from_codes(np.array([[0, 2], [1, -1]]))
    assert unnamed.levels == {"c0": ["0", "1"], "c1": ["0", "1", "2"]}


def test_conditioned_training_errors_are_clear():
    x = np.random.default_rng(0).standard_normal((100, D_IN)).astype(np.float32)
    with pytest.raises(PathosaeError, match="conditions="):
        train_sae(x, cfg(2), architecture="topk_offsets")
    with pytest.raises(PathosaeError, match="rows"):
        train_sae(x, cfg(2), architecture="topk_reserved", conditions=np.zeros(50, dtype=np.int64))
    with pytest.raises(PathosaeError, match="outside"):
        Conditions(np.array([[0], [5]]), {"site": ["a", "b"]})
    with pytest.raises(PathosaeError, match="vocabulary"):
        build_model(D_IN, cfg(1), "topk_reserved")
    with pytest.raises(PathosaeError, match="reserved"):
        build_model(D_IN, SAEConfig(d_sae=16, k=9), "topk_reserved", levels={"site": SITES})
    plain = train_sae(x, cfg(2), architecture="topk", conditions=np.zeros(100, dtype=np.int64))
    assert plain.training_log["confounders"] == []
