"""A small real run for the app's tests: synthetic slides through every stage that exists.

Built with the library (synthetic cohort, cohort, tiling, embedding, SAE, confounders, then the
edit and SAE-ception stages when they are available), with settings small enough for a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

N_SLIDES = 18
SLIDE_PX = (900, 1000)

SMALL_CONFIG: dict[str, Any] = {
    "seed": 0,
    "embedding": {"batch_size": 16, "num_workers": 0, "device": "cpu"},
    "sae": {
        "expansion": 2, "k": 8, "n_samples": 4096, "batch_size": 256, "init_samples": 512,
        "dead_window": 2048, "device": "cpu", "threads": 1,
        "controls": {"random_encoder": False, "permuted": False, "seed_stability": False,
                     "concept_coverage": False},
    },
    "confounders": {"n_confirm": 1, "n_permutations": 19, "cv_folds": 2, "combat": False,
                    "k_neighbors": 3},
}
SMALL_EDIT: dict[str, Any] = {
    "random_draws": 1, "modes": ["applied"], "leakage_folds": 2,
    "downstream": {"epochs": 5, "hidden_dim": 16, "attention_dim": 8, "max_tiles_per_slide": 32},
}
SMALL_SAECEPTION: dict[str, Any] = {
    "cycles": 1, "seeds": [0], "variants": ["no_aux", "plain"], "cycle_epochs": 3,
    "sae_samples": 2048, "eval_max_tiles": 200, "leakage_folds": 2,
    "downstream": {"epochs": 5, "hidden_dim": 16, "attention_dim": 8, "max_tiles_per_slide": 32},
}


def build_small_run(root: Path, stages: list[str] | None = None) -> Path:
    """Generate the cohort under ``root/cohort`` and run the stages into ``root/run``."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pathosae.synth import SynthParams, generate_cohort
    from pathosae.workflow import prepare_run, run_pipeline

    params = SynthParams(slide_px_min=SLIDE_PX[0], slide_px_max=SLIDE_PX[1])
    manifest = generate_cohort(root / "cohort", n_slides=N_SLIDES, seed=0, params=params)
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(_full_config()), encoding="utf-8")
    run, cfg = prepare_run(manifest, root / "run", config_path)
    run_pipeline(run, cfg, stages=stages, echo=lambda _msg: None)
    return run.root


def _full_config() -> dict[str, Any]:
    """The small config, edit and SAE-ception sections included."""
    return {**SMALL_CONFIG, "edit": SMALL_EDIT, "saeception": SMALL_SAECEPTION}


def shared_small_run(base: Path) -> Path:
    """One small run per pytest session, shared by the app's test modules (``base``: the
    session's base temp folder); a finished marker guards against a half-built run.

    The shared run is a read-only source: a test module takes a copy (:func:`copy_run`) and a test
    that writes into a run (tags, saved specs, links) takes a copy of its own, so no test sees
    what another one wrote."""
    root = base / "app_small_run"
    marker = root / "built.ok"
    if not marker.is_file():
        if root.exists():
            import shutil

            shutil.rmtree(root)
        build_small_run(root)
        marker.write_text("ok\n", encoding="utf-8")
    return root / "run"


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of ``run`` at ``dest`` (the slides it names stay where they are)."""
    import shutil

    shutil.copytree(run, dest, symlinks=True)
    return dest
