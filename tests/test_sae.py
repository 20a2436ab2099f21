"""SAE architectures: shapes, training, the decoder constraint, saving, determinism, sparsity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pathosae.config import SAEConfig
from pathosae.errors import PathosaeError
from pathosae.sae import architectures, build_sae, evaluate_sae, load_sae, save_sae, train_sae
from pathosae.sae.conditional import ConditionedTopKSAE
from pathosae.sae.levels import Conditions
from pathosae.sae.training import RowView, build_model

ARCHS = sorted(architectures())
D_IN, D_SAE, K = 32, 64, 4
# Confounder-aware SAEs take level codes per row; the shared tests give them random ones (two
# confounders, listed out of alphabetical order so the saved vocabulary must keep its order).
LEVELS = {"site": ["s0", "s1", "s2"], "scanner": ["a", "b"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared small CPU, OpenMP threads that wait on each other make these
    small trainings several times slower (results are the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_conditions(n: int, seed: int = 0) -> np.ndarray:
    """Codes per row for LEVELS, with some -1 (unknown)."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(-1, len(v), n) for v in LEVELS.values()], axis=1)
    return codes.astype(np.int64)


def conditions_for(x: np.ndarray, seed: int = 0) -> Conditions:
    return Conditions(random_conditions(len(x), seed), LEVELS)


def run(sae, batch: torch.Tensor, codes: np.ndarray | None):
    """``sae(batch)``, with the rows' codes for a confounder-aware SAE."""
    return sae(batch, codes) if isinstance(sae, ConditionedTopKSAE) else sae(batch)


def planted(n: int = 4000, d: int = D_IN, m: int = 48, active: int = 3, seed: int = 0):
    """Sparse non-negative combinations of m unit atoms, plus a non-zero mean."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((m, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, m))
    for i in range(n):
        chosen = rng.choice(m, size=active, replace=False)
        codes[i, chosen] = rng.exponential(1.0, size=active) + 0.5
    x = codes @ atoms + 0.5 + 0.01 * rng.standard_normal((n, d))
    return x.astype(np.float32), atoms.astype(np.float32)


def small_cfg(**kw) -> SAEConfig:
    base = {"d_sae": D_SAE, "k": K, "batch_size": 256, "n_samples": 256 * 60, "dead_window": 2000,
            "init_samples": 1000, "lr": 3e-3, "l1_coefficient": 2e-3, "l0_coefficient": 2e-3}
    base.update(kw)
    return SAEConfig(**base)


def test_registry_has_every_architecture():
    assert {"topk", "batchtopk", "relu", "jumprelu", "matryoshka"} <= set(ARCHS)
    assert {"topk_offsets", "topk_reserved", "topk_offsets_reserved"} <= set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes(arch):
    sae = build_model(D_IN, small_cfg(), arch, levels=LEVELS)
    x = torch.randn(10, D_IN)
    codes = random_conditions(10)
    z, recon = run(sae, x, codes)
    assert z.shape == (10, D_SAE) and recon.shape == (10, D_IN)
    assert sae.encode(x).shape == (10, D_SAE) and sae.decode(z).shape == (10, D_IN)
    if isinstance(sae, ConditionedTopKSAE):
        losses = sae.losses(x, conditions=codes, labels=torch.randint(0, 2, (10,)))
        assert {"supervised", "independence"} <= set(losses) or hasattr(sae, "offsets")
    else:
        losses = sae.losses(x)
    assert "mse" in losses and all(v.ndim == 0 for v in losses.values())


@pytest.fixture(scope="module")
def trained():
    x, _ = planted()
    cfg = small_cfg(n_samples=256 * 150)
    conditions = conditions_for(x)  # ignored by the plain architectures
    return x, {arch: train_sae(x, cfg, architecture=arch, conditions=conditions) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_training_reduces_loss_and_keeps_unit_decoder(arch, trained):
    x, models = trained
    untrained = build_model(D_IN, small_cfg(), arch, levels=LEVELS).eval()
    with torch.no_grad():
        untrained.b_dec.copy_(torch.from_numpy(x.mean(0)))
    before = evaluate_sae(untrained, x)["fvu"]
    after = evaluate_sae(models[arch], x, conditions=random_conditions(len(x)))
    assert after["fvu"] < 0.5 * before, (arch, before, after)
    norms = models[arch].W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_training_matches_float32(arch, trained):
    """bfloat16 autocast (the GPU default) on the CPU: the loss still falls, the FVU stays close
    to the float32 model's, and the weights stay float32."""
    x, models = trained
    cfg = small_cfg(n_samples=256 * 150, precision="bfloat16")
    sae = train_sae(x, cfg, architecture=arch, conditions=conditions_for(x))
    assert sae.training_log["precision"] == "bfloat16" and sae.W_dec.dtype == torch.float32
    conditions = random_conditions(len(x))
    half = evaluate_sae(sae, x, conditions=conditions)["fvu"]
    full = evaluate_sae(models[arch], x, conditions=conditions)["fvu"]
    assert half < full + 0.05, (arch, half, full)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, trained, tmp_path):
    x, models = trained
    sae = models[arch]
    save_sae(sae, tmp_path / arch, metrics={"note": 1})
    loaded = load_sae(tmp_path / arch)
    assert type(loaded) is type(sae)
    batch = torch.from_numpy(x[:50])
    codes = random_conditions(50, seed=3)
    with torch.no_grad():
        za, ra = run(sae, batch, codes)
        zb, rb = run(loaded, batch, codes)
    assert torch.equal(za, zb) and torch.equal(ra, rb)


@pytest.mark.parametrize("arch", ARCHS)
def test_deterministic_on_cpu(arch):
    x, _ = planted(n=1000)
    cfg = small_cfg(n_samples=256 * 5)
    conditions = conditions_for(x)
    a = train_sae(x, cfg, architecture=arch, conditions=conditions).state_dict()
    b = train_sae(x, cfg, architecture=arch, conditions=conditions).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train_sae(x, cfg, architecture=arch, seed=1, conditions=conditions).state_dict()
    assert not torch.equal(a["W_dec"], c["W_dec"])


def _randomise_condition_parameters(sae) -> None:
    """Non-trivial offsets and level counts (the offsets model), so the tests exercise them."""
    if hasattr(sae, "offsets"):
        with torch.no_grad():
            sae.offsets.normal_()
            sae.level_counts.copy_(torch.arange(1, sae.level_counts.numel() + 1))


@pytest.mark.parametrize("arch", ARCHS)
def test_input_scale_is_folded(arch):
    """A model trained on s·x, after folding, gives on x the same reconstruction / s."""
    torch.manual_seed(0)
    sae = build_model(D_IN, small_cfg(), arch, levels=LEVELS).eval()
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    _randomise_condition_parameters(sae)
    x, scale = torch.randn(20, D_IN), 3.7
    codes = random_conditions(20)
    with torch.no_grad():
        z_scaled, r_scaled = run(sae, x * scale, codes)
        sae.fold_input_scale(scale)
        z, r = run(sae, x, codes)
    assert torch.allclose(r, r_scaled / scale, atol=1e-5)
    assert torch.allclose(z, z_scaled / scale, atol=1e-5)


@pytest.mark.parametrize("arch", [
    "topk", "batchtopk", "matryoshka", "topk_offsets", "topk_reserved", "topk_offsets_reserved",
])
@pytest.mark.parametrize("all_dead", [False, True])
def test_sparse_gradients_match_dense_reference(arch, all_dead):
    torch.manual_seed(0)
    sae = build_model(D_IN, small_cfg(), arch, levels=LEVELS).double().train()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    _randomise_condition_parameters(sae)
    x = torch.randn(40, D_IN, dtype=torch.float64) + 0.3
    extra = {}
    if isinstance(sae, ConditionedTopKSAE):
        extra = {"conditions": random_conditions(40), "labels": torch.randint(0, 2, (40,))}
    grads = []
    for reference in (False, True):
        sae.zero_grad()
        sae.samples_since_fired.fill_(10**9 if all_dead else 0)
        losses = sae.losses(x, reference=reference, **extra)
        assert (losses["aux"] > 0) == all_dead
        sum(losses.values()).backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    sparse, dense = grads
    for name in dense:
        assert torch.allclose(sparse[name], dense[name], atol=1e-10), name


def test_topk_has_exactly_k_actives(trained):
    x, models = trained
    z = models["topk"].encode(torch.from_numpy(x[:200]))
    assert ((z > 0).sum(1) == K).all()
    codes = models["topk"].encode_sparse(torch.from_numpy(x[:200]))
    assert torch.equal(codes.to_dense(), z)


def test_batchtopk_uses_batch_budget_then_fixed_threshold(trained):
    x, models = trained
    sae = models["batchtopk"]
    assert float(sae.threshold) > 0
    batch = torch.from_numpy(x[:256])
    saved = sae.threshold.clone()
    sae.train()
    try:
        codes = sae.encode_sparse(batch)
    finally:
        sae.eval()
        sae.threshold.copy_(saved)
    assert codes.values.numel() == K * 256  # k·B actives over the batch, not k per sample
    assert len(set(torch.bincount(codes.rows, minlength=256).tolist())) > 1
    pre = sae.pre_acts(batch)
    z = sae.encode(batch)
    assert torch.equal(z, pre * (pre > sae.threshold))
    # Inference is per sample: a row's codes do not depend on the rest of the batch.
    assert torch.allclose(sae.encode(batch[:3]), z[:3], atol=1e-5)


def test_matryoshka_prefixes_reconstruct(trained):
    x, models = trained
    mat, topk = models["matryoshka"], models["topk"]
    batch = torch.from_numpy(x)
    smallest = mat.prefixes[0]
    assert mat.prefixes[-1] == D_SAE and len(mat.prefixes) > 2

    def prefix_fvu(sae, size):
        with torch.no_grad():
            z = sae.encode(batch)
            recon = torch.addmm(sae.b_dec, z[:, :size], sae.W_dec[:size])
        return float(((recon - batch) ** 2).sum() / ((batch - batch.mean(0)) ** 2).sum())

    fvus = [prefix_fvu(mat, m) for m in mat.prefixes]
    assert all(a >= b - 1e-3 for a, b in itertools.pairwise(fvus))
    assert fvus[0] < 0.9 * prefix_fvu(topk, smallest)  # the first prefix alone is trained to help


def test_bad_inputs_get_clear_errors(tmp_path):
    x = np.ones((100, D_IN), dtype=np.float32)
    x[7, 3] = np.nan
    with pytest.raises(PathosaeError, match="NaN"):
        train_sae(x, small_cfg(n_samples=256 * 2, init_samples=100))
    with pytest.raises(PathosaeError, match="2-D"):
        train_sae(np.ones(10, dtype=np.float32), small_cfg())
    with pytest.raises(PathosaeError, match="missing"):
        load_sae(tmp_path)
    sae = build_sae("topk", d_in=D_IN, d_sae=D_SAE, k=K)
    save_sae(sae, tmp_path / "m")
    import json

    cfg_path = tmp_path / "m" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hparams"]["d_sae"] = D_SAE * 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PathosaeError, match="shape"):
        load_sae(tmp_path / "m")


def test_trains_from_memmap_rows(tmp_path):
    x, _ = planted(n=2000)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    rows = np.arange(0, 2000, 2)
    view = RowView(mm, rows)
    cfg = small_cfg(n_samples=256 * 4, init_samples=500)
    from_view = train_sae(view, cfg).state_dict()
    from_array = train_sae(x[rows], cfg).state_dict()
    assert all(torch.equal(from_view[k], from_array[k]) for k in from_view)


@pytest.mark.parametrize("match", ["best", "hungarian"])
def test_seed_stability_flags_units_by_the_configured_match(match):
    from pathosae.sae import controls
    from pathosae.sae.run_training import _seed_stability

    x, _ = planted(n=2000)
    cfg = small_cfg(n_samples=256 * 20)
    cfg = cfg.model_copy(update={"controls": cfg.controls.model_copy(
        update={"stability_seeds": 3, "stable_match": match})})
    sae = train_sae(x, cfg, architecture="topk", seed=cfg.seed)
    result = _seed_stability(sae, x, cfg, "topk", {})
    others = [train_sae(x, cfg, architecture="topk", seed=s) for s in result["seeds"][1:]]
    expected = np.min([controls.seed_cosines(o.W_dec, sae.W_dec, match) for o in others], axis=0)
    assert np.allclose(result["_unit_cosine"], expected)  # every other seed, the smallest
    assert result["stable_match"] == match
    assert result["n_stable_units"] == int((expected >= cfg.controls.stable_cosine).sum())
    if match == "best":  # the nearest atom is never farther than the one-to-one partner
        hungarian = np.min([controls.matched_cosines(o.W_dec, sae.W_dec) for o in others], axis=0)
        assert np.all(result["_unit_cosine"] >= hungarian - 1e-12)
