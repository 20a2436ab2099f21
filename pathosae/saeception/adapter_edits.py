"""Edits on the adapter layer of SAE-ception models, through the cycle's own SAE.

An SAE-ception model's adapter activations ``h`` are edited like embeddings are:
``h' = h − D·z + D·z'`` with ``z`` the code of the cycle's SAE (its error kept), and the
attention-MIL head runs on ``h'``. The effect table has the edit stage's columns in the
``applied`` mode only: the edit sits inside the model, so retraining "on edited inputs" has no
meaning here. Defaults per model: ablate the units of the cycle SAE that the confounder scan
flags for the site on the training slides (the scan the injection uses), and random-unit edits
of the same size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from pathosae.downstream import AdapterMIL
from pathosae.downstream.splits import Splits
from pathosae.downstream.train import predict_proba_hidden, tile_hidden
from pathosae.edit.editor import Editor
from pathosae.edit.effects import Candidate, editor_candidate, effect_table, missing_candidate
from pathosae.edit.spec import Ablate, EditSpec, RandomUnits
from pathosae.errors import StageError
from pathosae.saeception.config import SAECeptionConfig
from pathosae.saeception.confounding import flag_confounded_units

if TYPE_CHECKING:
    from pathosae.config import PathosaeConfig
    from pathosae.run import RunDir

MODE_NOTE = "applied only: an adapter-layer edit acts inside the model, retraining has no meaning"


def hidden_splits(model: AdapterMIL, splits: Splits) -> Splits:
    """The same slides and tiles with adapter activations ``h`` in place of the embeddings."""
    return Splits(*(b.with_x(tile_hidden(model, b.x)) for b in (splits.train, splits.normal,
                                                                splits.shifted)))


def _metadata(splits: Splits) -> dict[str, np.ndarray]:
    from pathosae.edit.stage import metadata_of

    return metadata_of(splits)


def site_flagged_units(
    sae: torch.nn.Module, hidden: Splits, cfg: SAECeptionConfig
) -> list[int]:
    """Units of the cycle SAE the confounder scan flags for the site on the training slides
    (label as covariate; ``cfg.flag_rule`` and ``cfg.flag_alpha`` as in the injection)."""
    from pathosae.sae.metrics import encode_rows
    from pathosae.saeception.cycle import slide_metadata

    train = hidden.train
    codes = encode_rows(sae, train.x)
    mask = flag_confounded_units(codes, train.slide, slide_metadata(train, cfg), [cfg.site_column],
                                 "label", cfg.flag_alpha, cfg.flag_rule)
    return [int(u) for u in mask.nonzero().flatten()]


def adapter_effects(
    model: AdapterMIL, sae: torch.nn.Module, splits: Splits, candidates_of: list[tuple[EditSpec, str]],
    cfg: SAECeptionConfig, seed: int, hidden: Splits | None = None, extra: list[Candidate] | None = None,
) -> pd.DataFrame:
    """Effect table of adapter-layer specs (``(spec, kind)``) on ``model`` through ``sae``."""
    hidden = hidden or hidden_splits(model, splits)
    candidates = [editor_candidate(s.name, kind, Editor(s, sae), _metadata) for s, kind in candidates_of]
    table = effect_table(hidden, [*candidates, *(extra or [])], cfg.downstream, seed,
                         base_model=model, modes=("applied",), leakage_folds=cfg.leakage_folds,
                         predict=predict_proba_hidden)
    return table.assign(layer="adapter")


def default_adapter_effects(
    model: AdapterMIL, sae: torch.nn.Module, splits: Splits, cfg: SAECeptionConfig, seed: int,
    random_draws: int,
) -> pd.DataFrame:
    """Ablation of the site-flagged units of the cycle SAE and ``random_draws`` random-unit
    ablations of as many units (drawn among units that fire on the training activations)."""
    hidden = hidden_splits(model, splits)
    units = site_flagged_units(sae, hidden, cfg)
    name = f"ablate_flagged_{cfg.site_column}"
    if not units:
        reason = (f"no unit of the cycle SAE is flagged for {cfg.site_column!r} "
                  f"(flag_rule {cfg.flag_rule}, q ≤ {cfg.flag_alpha})")
        table = adapter_effects(model, sae, splits, [], cfg, seed, hidden,
                                [missing_candidate(name, reason)])
        return table.assign(kind=np.where(table["edit"] == name, "edit", table["kind"]))
    specs = [(EditSpec(name=name, ops=[Ablate(units=units)], layer="adapter"), "edit")]
    randoms = []
    for draw in range(random_draws):
        spec = EditSpec(name=f"random_units_{cfg.site_column}_{draw}", layer="adapter",
                        ops=[RandomUnits(count=len(units), seed=1000 * seed + draw)])
        randoms.append(editor_candidate(spec.name, "random", Editor(spec, sae), _metadata, draw))
    return adapter_effects(model, sae, splits, specs, cfg, seed, hidden, randoms)


def load_cycle_model(folder: Path) -> tuple[AdapterMIL, torch.nn.Module]:
    """An SAE-ception model and its cycle SAE from RUN/saeception/cycle_<k>/<variant>_seed<s>/."""
    from pathosae.sae import load_sae

    weights = folder / "model.safetensors"
    if not weights.is_file() or not (folder / "sae").is_dir():
        raise StageError(
            f"no SAE-ception model in {folder} (model.safetensors and sae/ expected). Fix: run "
            "`pathosae sharpen --run RUN`, or name a folder like cycle_3/injected_seed0."
        )
    state = load_file(str(weights))
    hidden_dim, d_in = state["adapter.weight"].shape
    model = AdapterMIL(int(d_in), int(state["classifier.weight"].shape[0]), int(hidden_dim),
                       int(state["attn_v.weight"].shape[0]))
    model.load_state_dict(state)
    model.eval()
    return model, load_sae(folder / "sae")


def available_models(saeception_dir: Path) -> list[str]:
    """Model folders under RUN/saeception/ (``cycle_<k>/<variant>_seed<s>``)."""
    found = saeception_dir.glob("cycle_*/*/model.safetensors")
    return sorted(str(p.parent.relative_to(saeception_dir)) for p in found)


def run_bags_splits(run: RunDir, cfg: PathosaeConfig) -> tuple[Splits, str | None]:
    """The slides, tiles and splits the SAE-ception stage trains and tests on."""
    from pathosae.downstream.runs import load_run_bags
    from pathosae.downstream.splits import cohort_splits

    scfg = cfg.saeception
    bags = load_run_bags(run, cfg, scfg.site_column, scfg.downstream.max_tiles_per_slide,
                         scfg.seeds[0], scfg.confounders)
    return cohort_splits(bags, scfg)


def measure_adapter_specs(run: RunDir, cfg: PathosaeConfig, specs: list[EditSpec]) -> pd.DataFrame:
    """Effect table of user adapter-layer specs, each on the SAE-ception model it names, on
    the SAE-ception stage's splits (the model's own training and test slides)."""
    scfg = cfg.saeception
    root = run.root / "saeception"
    splits, held_out = run_bags_splits(run, cfg)
    frames = []
    for model_ref in dict.fromkeys(str(s.model) for s in specs):
        if not (root / model_ref / "model.safetensors").is_file():
            raise StageError(
                f"edit spec names SAE-ception model {model_ref!r}, which is not in {root} "
                f"(models there: {available_models(root)[:12]}). Fix: run `pathosae sharpen` "
                "or name one of those folders."
            )
        model, sae = load_cycle_model(root / model_ref)
        chosen = [(s, "edit") for s in specs if s.model == model_ref]
        frames.append(adapter_effects(model, sae, splits, chosen, scfg, scfg.seeds[0])
                      .assign(model=model_ref))
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "held_out_site", held_out)
    return table
