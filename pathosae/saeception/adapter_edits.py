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

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from pathosae.config import PathosaeConfig, UncertaintyConfig
from pathosae.downstream.model import AdapterMIL
from pathosae.downstream.splits import Splits, cohort_splits, train_tile_metadata
from pathosae.downstream.train import predict_proba_hidden, tile_hidden
from pathosae.edit.editor import Editor
from pathosae.edit.effects import Candidate, editor_candidate, effect_table, missing_candidate
from pathosae.edit.spec import Ablate, EditSpec, RandomUnits
from pathosae.errors import StageError
from pathosae.inputs import load_run_bags
from pathosae.run import RunDir
from pathosae.sae.base import SAE
from pathosae.sae.io import load_sae
from pathosae.sae.metrics import encode_rows
from pathosae.saeception.config import SAECeptionConfig
from pathosae.saeception.confounding import flag_confounded_units
from pathosae.saeception.cycle import slide_metadata
from pathosae.schema import CYCLE_MODEL, HELD_OUT_SITE

MODE_NOTE = "applied only: an adapter-layer edit acts inside the model, retraining has no meaning"


def hidden_splits(model: AdapterMIL, splits: Splits) -> Splits:
    """The same slides and tiles with adapter activations ``h`` in place of the embeddings."""
    return Splits(*(b.with_x(tile_hidden(model, b.x)) for b in (splits.train, splits.normal,
                                                                splits.shifted)))


def site_flagged_units(
    sae: SAE, hidden: Splits, cfg: SAECeptionConfig
) -> list[int]:
    """Units of the cycle SAE the confounder scan flags for the site on the training slides
    (label as covariate; ``cfg.flag_rule`` and ``cfg.flag_alpha`` as in the injection)."""
    train = hidden.train
    codes = encode_rows(sae, train.x)
    mask = flag_confounded_units(codes, train.slide, slide_metadata(train, cfg), [cfg.site_column],
                                 "label", cfg.flag_alpha, cfg.flag_rule)
    return [int(u) for u in mask.nonzero().flatten()]


def adapter_effects(  # noqa: PLR0913 - the table's inputs and its optional measurements
    model: AdapterMIL, sae: SAE, splits: Splits, candidates_of: list[tuple[EditSpec, str]],
    cfg: SAECeptionConfig, seed: int, hidden: Splits | None = None, extra: list[Candidate] | None = None,
    *, uncertainty: UncertaintyConfig | None = None,
) -> pd.DataFrame:
    """Effect table of adapter-layer specs (``(spec, kind)``) on ``model`` through ``sae``
    (``uncertainty``: the bootstrap intervals' settings; None leaves them NaN)."""
    hidden = hidden or hidden_splits(model, splits)
    candidates = [editor_candidate(s.name, kind, Editor(s, sae), train_tile_metadata)
                  for s, kind in candidates_of]
    table = effect_table(hidden, [*candidates, *(extra or [])], cfg.downstream, seed,
                         base_model=model, modes=("applied",), leakage_folds=cfg.leakage_folds,
                         predict=predict_proba_hidden, uncertainty=uncertainty)
    return table.assign(layer="adapter")


def default_adapter_effects(
    model: AdapterMIL, sae: SAE, splits: Splits, cfg: SAECeptionConfig, seed: int,
    random_draws: int, *, uncertainty: UncertaintyConfig | None = None,
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
                                [missing_candidate(name, reason)], uncertainty=uncertainty)
        return table.assign(kind=np.where(table["edit"] == name, "edit", table["kind"]))
    specs = [(EditSpec(name=name, ops=[Ablate(units=units)], layer="adapter"), "edit")]
    randoms = []
    for draw in range(random_draws):
        spec = EditSpec(name=f"random_units_{cfg.site_column}_{draw}", layer="adapter",
                        ops=[RandomUnits(count=len(units), seed=1000 * seed + draw)])
        randoms.append(editor_candidate(spec.name, "random", Editor(spec, sae), train_tile_metadata, draw))
    return adapter_effects(model, sae, splits, specs, cfg, seed, hidden, randoms,
                           uncertainty=uncertainty)


def load_cycle_model(folder: Path) -> tuple[AdapterMIL, SAE]:
    """An SAE-ception model and its cycle SAE from RUN/saeception/cycle_<k>/<variant>_seed<s>/."""
    weights = folder / CYCLE_MODEL
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
    found = saeception_dir.glob(f"cycle_*/*/{CYCLE_MODEL}")
    return sorted(str(p.parent.relative_to(saeception_dir)) for p in found)


def run_bags_splits(run: RunDir, cfg: PathosaeConfig) -> tuple[Splits, str | None]:
    """The slides, tiles and splits the SAE-ception stage trains and tests on."""
    scfg = cfg.saeception
    bags = load_run_bags(run, cfg, scfg.site_column, scfg.downstream.max_tiles_per_slide,
                         scfg.seeds[0], scfg.confounders, max_tiles=scfg.downstream.max_tiles)
    return cohort_splits(bags, scfg)


def measure_adapter_specs(
    saeception_dir: Path, splits: Splits, held_out_site: str | None, scfg: SAECeptionConfig,
    specs: list[EditSpec], *, uncertainty: UncertaintyConfig | None = None,
) -> pd.DataFrame:
    """Effect table of user adapter-layer specs, each on the SAE-ception model it names, on
    the SAE-ception stage's splits (the model's own training and test slides)."""
    frames = []
    for model_ref in dict.fromkeys(str(s.model) for s in specs):
        if not (saeception_dir / model_ref / CYCLE_MODEL).is_file():
            raise StageError(
                f"edit spec names SAE-ception model {model_ref!r}, which is not in "
                f"{saeception_dir} (models there: {available_models(saeception_dir)[:12]}). "
                "Fix: run `pathosae sharpen` or name one of those folders."
            )
        model, sae = load_cycle_model(saeception_dir / model_ref)
        chosen = [(s, "edit") for s in specs if s.model == model_ref]
        frames.append(adapter_effects(model, sae, splits, chosen, scfg, scfg.seeds[0],
                                      uncertainty=uncertainty).assign(model=model_ref))
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, HELD_OUT_SITE, held_out_site)
    return table
