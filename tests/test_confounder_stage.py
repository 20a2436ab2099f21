"""The confounder stage on a small run written in the contract formats."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pathosae.config import load_config
from pathosae.confounders.directions import load_directions
from pathosae.confounders.stage import run_stage
from pathosae.embedding import h5files
from pathosae.errors import StageError
from pathosae.run import RunDir
from pathosae.sae import build_sae, save_sae

ENCODER = "toy"
N_SLIDES, TILES, DIM = 36, 12, 12


def _make_run(root) -> RunDir:
    import torch

    rng = np.random.default_rng(0)
    run = RunDir(root)
    run.root.mkdir(parents=True)
    cohort = pd.DataFrame({
        "slide_id": [f"s{i:02d}" for i in range(N_SLIDES)],
        "path": [f"/slides/s{i:02d}.tif" for i in range(N_SLIDES)],
        "patient_id": [f"p{i // 2:02d}" for i in range(N_SLIDES)],  # two slides per patient
        "mpp": 0.5,
        "split": np.tile(["train", "train", "train", "train", "test", "test"], N_SLIDES // 6),
        "manifest_row": np.arange(N_SLIDES) + 2,
        "label": np.repeat(np.tile(["tumour", "normal"], N_SLIDES // 4), 2),
        "site": np.repeat(np.tile(["site_A", "site_B", "site_C"], N_SLIDES // 6), 2),
        "scanner": np.repeat(np.tile(["scanner_1", "scanner_2"], N_SLIDES // 4), 2)[::-1],
    })
    cohort.to_parquet(run.cohort_path, index=False)
    site_shift = {"site_A": 0.0, "site_B": 1.5, "site_C": -1.0}
    for row in cohort.itertuples():
        feats = rng.normal(size=(TILES, DIM)).astype(np.float32)
        feats[:, 0] += site_shift[row.site]
        feats[:, 1] += 1.0 * (row.label == "tumour")
        coords = np.stack([np.arange(TILES) * 224, np.zeros(TILES)], axis=1)
        h5files.write_feature_file(run.features_path(ENCODER, row.slide_id), feats, coords,
                                   {"encoder": ENCODER, "dim": DIM})
    torch.manual_seed(0)
    sae = build_sae("relu", d_in=DIM, d_sae=24)
    with torch.no_grad():  # unit 0 reads the site axis, unit 1 the label axis
        sae.W_enc[0] = torch.nn.functional.one_hot(torch.tensor(0), DIM).float()
        sae.W_enc[1] = torch.nn.functional.one_hot(torch.tensor(1), DIM).float()
    save_sae(sae, run.sae_dir("relu_toy"))
    return run


def _config():
    return load_config(None, {
        "embedding": {"encoder": ENCODER},
        # parametric tests here: the planted unit 0 is then the single top hit to confirm
        "confounders": {"n_permutations": 19, "n_confirm": 1, "cv_folds": 3, "k_neighbors": 3,
                        "covariates": ["label"], "correlation": "pearson"},
    })


def test_stage_writes_outputs_and_skips_when_unchanged(tmp_path) -> None:
    run = _make_run(tmp_path / "run")
    cfg = _config()
    summary = run_stage(run, cfg, "stop")
    out = run.root / "confounders"
    assoc = pd.read_parquet(out / "associations.parquet")
    required = {"unit", "variable", "aggregation", "effect", "signed_effect", "statistic", "p",
                "q", "direction", "n_slides", "level", "mm_p", "perm_p", "settings_hash"}
    assert required <= set(assoc.columns)
    assert set(assoc["level"]) == {"slide", "patient"}
    site0 = assoc[(assoc["unit"] == 0) & (assoc["variable"] == "site")
                  & (assoc["aggregation"] == "mean") & (assoc["level"] == "slide")].iloc[0]
    assert site0["q"] < 0.01 and site0["direction"] == "site_B"
    assert site0["perm_p"] <= 0.1 and site0["mm_p"] < 0.01
    assert summary["flagged_units"].get("site", 0) >= 1
    leakage = pd.read_parquet(out / "leakage.parquet")
    assert {"embedding", "sae_codes", "sae_residual"} <= set(leakage["representation"])
    assert "embedding_combat" in set(leakage["representation"])
    site_raw = leakage[(leakage["variable"] == "site") & (leakage["representation"] == "embedding")
                       & (leakage["subset"] == "all") & (leakage["scheme"] == "patient_folds")]
    assert site_raw["auroc"].iloc[0] > 0.8
    pathorob = pd.read_parquet(out / "pathorob.parquet")
    assert set(pathorob["confounder"]) == {"site", "scanner"}
    tensors = load_directions(out / "directions.safetensors")
    assert tensors["site.mean_difference"].shape == (3, DIM)
    assert 0 in tensors["site.flagged_units"].tolist()
    sidecar = json.loads((out / "directions.json").read_text())
    assert sidecar["variables"]["site"]["levels"] == ["site_A", "site_B", "site_C"]
    assert (out / "heatmap.png").is_file() and (out / "leakage.png").is_file()

    again = run_stage(run, cfg, "stop")
    assert again.get("skipped") is True
    changed = _config()
    changed.confounders.fdr_alpha = 0.01
    assert not run_stage(run, changed, "stop").get("skipped")


def test_stage_errors_name_the_fix(tmp_path) -> None:
    run = _make_run(tmp_path / "run")
    cfg = _config()
    cfg.confounders.variables = ["hospital"]
    with pytest.raises(StageError, match=r"confounders\.variables"):
        run_stage(run, cfg, "stop")
    cfg = _config()
    cfg.confounders.sae = "missing"
    with pytest.raises(StageError, match="pathosae sae"):
        run_stage(run, cfg, "stop")
