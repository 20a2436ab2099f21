"""The edit and sharpen stages on real pipeline runs of synthetic slides (tile → embed → SAE →
confounders → edit → sharpen), checked for the structure and invariants of their tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pathosae.errors import StageError
from pathosae.workflow import prepare_run, run_pipeline

pytestmark = pytest.mark.slow

VARIANTS = ("no_aux", "random_target", "plain", "injected")
SEEDS = [0, 1]
CYCLES = 2
RANDOM_DRAWS = 2

TINY = {
    "embedding": {"baselines": [], "batch_size": 16, "num_workers": 0},
    "sae": {
        "expansion": 2, "k": 8, "n_samples": 4096, "batch_size": 128, "dead_window": 2048,
        "init_samples": 512, "eval_max_rows": 2000,
        "controls": {"random_encoder": False, "permuted": False, "seed_stability": False,
                     "concept_coverage": False},
    },
    "confounders": {"combat": False, "n_confirm": 0, "n_permutations": 9, "cv_folds": 2, "k_neighbors": 3},
    "edit": {"random_draws": RANDOM_DRAWS, "max_flagged_units": 16,
             "downstream": {"epochs": 4, "hidden_dim": 16, "attention_dim": 8}},
    "saeception": {
        "cycles": CYCLES, "seeds": SEEDS, "cycle_epochs": 2, "sae_samples": 2048,
        "sae_expansion": 2, "sae_k": 4, "n_top": 4, "aux_weight_grid": [0.1, 0.5],
        "n_top_grid": [4], "eval_max_tiles": 300, "min_cell_tiles": 2,
        "downstream": {"epochs": 4, "hidden_dim": 16, "attention_dim": 8},
    },
}


def _config(tmp: Path, overrides: dict | None = None) -> Path:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, **(overrides or {})}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-slide synthetic cohort with strong label–site confounding, run through sharpen."""
    from pathosae.synth import SynthParams, generate_cohort

    base = tmp_path_factory.mktemp("edit_stage")
    params = SynthParams(slide_px_min=800, slide_px_max=900)
    manifest = generate_cohort(base / "cohort", n_slides=16, seed=3, params=params)
    run, cfg = prepare_run(manifest, base / "run", _config(base))
    run_pipeline(run, cfg, until="sharpen", echo=lambda _: None)
    return base / "run"


@pytest.fixture()
def own_run(stage_run: Path, tmp_path: Path) -> Path:
    """A copy of the stage run for a test that reruns a stage or adds outputs to it, so the
    other tests keep reading the run as the module fixture built it."""
    return Path(shutil.copytree(stage_run, tmp_path / "run", symlinks=True))


def test_edit_table_invariants(stage_run: Path) -> None:
    effects = pd.read_parquet(stage_run / "edits" / "effects.parquet")
    assert effects["settings_hash"].nunique() == 1
    no_edit = effects[effects["edit"] == "no_edit"].set_index("mode")
    assert set(no_edit.index) == {"applied", "retrained"}
    assert (no_edit["flip_rate"] == 0).all() and (no_edit["collateral_bacc_drop"] == 0).all()
    # Every row is either scored or says why it is missing.
    scored = effects["missing_reason"].isna()
    assert effects.loc[~scored, "missing_reason"].str.len().gt(0).all()
    for col in ("bacc_normal", "bacc_shifted", "flip_rate"):
        values = effects.loc[scored, col].to_numpy(float)
        assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all(), col
    # Each flagged-unit ablation has RANDOM_DRAWS random edits of the same size in both modes.
    ablations = effects[effects["edit"].str.startswith("ablate_flagged_")]
    for name, group in ablations.groupby("edit"):
        var = name.removeprefix("ablate_flagged_")
        draws = effects[effects["edit"].str.startswith(f"random_units_{var}_")]
        assert len(draws) == RANDOM_DRAWS * 2, name
        assert set(draws["n_units"]) == set(group["n_units"])
        assert sorted(draws["draw"].dropna().unique().astype(int)) == list(range(RANDOM_DRAWS))
    baselines = set(effects.loc[effects["kind"] == "baseline", "edit"])
    assert {"no_edit", "combat", "stain_normalisation"} <= baselines
    # No stain-normalised features were embedded: that baseline is a row with its reason.
    stain = effects[effects["edit"] == "stain_normalisation"]
    assert stain["missing_reason"].str.contains("stain").all()
    # The unedited model was also run on every tile of the test slides, streamed from the store.
    all_tiles = json.loads((stage_run / "edits" / "summary.json").read_text())["all_tiles"]
    for split in ("normal", "shifted"):
        entry = all_tiles[split]
        assert entry["tiles_all"] >= entry["tiles_capped"] >= entry["slides"] > 0
        assert 0 <= entry["agreement"] <= 1 and 0 <= entry["bacc_all_tiles"] <= 1


def test_sharpen_table_has_every_variant_seed_and_cycle(stage_run: Path) -> None:
    metrics = pd.read_parquet(stage_run / "saeception" / "metrics.parquet")
    keys = set(zip(metrics["variant"], metrics["seed"], metrics["cycle"], strict=True))
    expected = {(v, s, k) for v in VARIANTS for s in SEEDS for k in range(CYCLES + 1)}
    assert keys == expected and len(metrics) == len(expected)
    # Cycle 0 is the one base model per seed, shared by every variant.
    base = metrics[metrics["cycle"] == 0]
    assert (base.groupby("seed")["bacc_shifted"].nunique() == 1).all()
    later = metrics[metrics["cycle"] > 0].set_index("variant")
    assert (later.loc["no_aux", "aux_weight"] == 0).all()
    assert later.loc["injected", "n_flagged"].notna().all()
    assert (later.loc["injected", "n_kept"] >= 1).all()
    selection = pd.read_parquet(stage_run / "saeception" / "selection.parquet")
    assert selection.groupby("variant")["chosen"].sum().eq(1).all()
    chosen = selection[selection["chosen"]].set_index("variant")["aux_weight"]
    for variant, lam in chosen.items():
        assert (later.loc[variant, "aux_weight"] == lam).all()
    for col in ("bacc_normal", "bacc_shifted", "sae_fvu", "silhouette", "monosemanticity"):
        assert np.isfinite(metrics[col].to_numpy(float)).all(), col
    assert (stage_run / "saeception" / "metrics.png").stat().st_size > 0


def test_a_finished_stage_is_not_recomputed(stage_run: Path) -> None:
    run, cfg = prepare_run(None, stage_run, None)
    summaries = run_pipeline(run, cfg, stages=["edit", "sharpen"], echo=lambda _: None)
    assert summaries["edit"].get("skipped") and summaries["sharpen"].get("skipped")


def test_a_tiny_cohort_stops_edit_and_sharpen_with_the_fix(
    small_synth_cohort: Path, tmp_path: Path
) -> None:
    """Six slides, with the manifest's splits: the training split holds a single slide of one
    class, too few to train the downstream model, so both stages stop with a StageError that
    names the split, the class, the counts and the fix, and write no table."""
    manifest = pd.read_csv(small_synth_cohort)
    per_class = manifest.loc[manifest["split"] == "train", "label"].value_counts().sort_index()
    short = sorted(per_class[per_class < 2].index)
    assert short, "the fixture's training split should lack slides of some class"
    expected = (f"split 'train' has fewer than 2 slides of class(es) {short} (slides per class: "
                f"{ {str(k): int(v) for k, v in per_class.items()} }). Fix: add slides of those "
                "classes, or move patients into the training split")
    run, cfg = prepare_run(small_synth_cohort, tmp_path / "run", _config(tmp_path))
    run_pipeline(run, cfg, until="confounders", echo=lambda _: None)
    for stage, folder in (("edit", "edits"), ("sharpen", "saeception")):
        with pytest.raises(StageError) as caught:
            run_pipeline(run, cfg, stages=[stage], echo=lambda _: None)
        assert str(caught.value).startswith(expected), stage
        assert not (run.root / folder).exists(), stage
        entry = run.read_state()["stages"][stage]
        assert entry["status"] == "failed" and entry["error"].startswith(expected)


def test_sharpen_writes_adapter_edits_of_every_last_cycle_model(stage_run: Path) -> None:
    edits = pd.read_parquet(stage_run / "saeception" / "adapter_edits.parquet")
    assert edits["settings_hash"].nunique() == 1 and (edits["mode"] == "applied").all()
    assert set(zip(edits["variant"], edits["seed"], strict=True)) == {(v, s) for v in VARIANTS for s in SEEDS}
    assert (edits["cycle"] == CYCLES).all() and (edits["layer"] == "adapter").all()
    for col in ("site_leakage_estimator", "flip_rate", "collateral_bacc_drop", "held_out_site"):
        assert col in edits.columns, col
    summary = json.loads((stage_run / "saeception" / "summary.json").read_text())
    assert "adapter_edits" in summary and "held_out_site" in summary


def test_cli_edit_applies_a_spec_to_an_saeception_model(own_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pathosae.cli import app

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "ablate_two", "ops": [{"op": "ablate", "units": [0, 1]}]}))
    model = f"cycle_{CYCLES}/injected_seed0"
    effects = own_run / "edits" / "effects.parquet"
    before = (effects.stat().st_ino, effects.stat().st_mtime_ns)
    result = CliRunner().invoke(app, ["edit", "--run", str(own_run), "--spec", str(spec),
                                      "--model", model])
    assert result.exit_code == 0, result.output
    # Adapter-layer specs are measured by the sharpen stage, on the model the command names.
    table = pd.read_parquet(own_run / "saeception" / "adapter_spec_effects.parquet")
    assert list(table["edit"]) == ["no_edit", "ablate_two"] and set(table["model"]) == {model}
    assert table.loc[1, "n_units"] == 2 and np.isfinite(table["bacc_shifted"].to_numpy(float)).all()
    summary = json.loads((own_run / "saeception" / "summary.json").read_text())
    assert summary["adapter_spec_edits"] == ["ablate_two"]
    # The embedding table was not recomputed for the adapter spec.
    assert (effects.stat().st_ino, effects.stat().st_mtime_ns) == before
    bad = CliRunner().invoke(app, ["edit", "--run", str(own_run), "--spec", str(spec),
                                   "--model", "cycle_9/nothing_seed0"])
    assert bad.exit_code != 0 and "cycle_9/nothing_seed0" in str(bad.output) + str(bad.exception)


def test_leave_one_site_out_on_a_run(own_run: Path, tmp_path: Path) -> None:
    from pathosae.workflow import run_one_stage

    config = _config(tmp_path, {"edit": {**TINY["edit"], "modes": ["applied"], "random_draws": 1,
                                         "shifted_split": "leave_one_site_out"}})
    summary = run_one_stage(own_run, config, "edit", "stop")
    site = summary["held_out_site"]
    effects = pd.read_parquet(own_run / "edits" / "effects.parquet")
    assert (effects["held_out_site"] == site).all()
    per_site = json.loads(effects.loc[effects["edit"] == "no_edit", "per_site_bacc_shifted"].iloc[0])
    assert set(per_site) == {site}  # the shifted test is that site alone
