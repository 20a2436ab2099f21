"""Trying an edit from the app: build the spec, measure it with the edit stage's effect table
against no edit, find the slides and tiles whose prediction changed, and save the spec.

The downstream model and the data splits are built once per run (``EditLab``); each edit then
costs one fit/transform of the edit and the evaluation of the already trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError

from pathosae.downstream.splits import cohort_splits, train_tile_metadata
from pathosae.downstream.train import predict_proba, train_downstream
from pathosae.edit.editor import Editor
from pathosae.edit.effects import editor_candidate, effect_table
from pathosae.edit.spec import Ablate, Clamp, EditSpec, ProjectCode, ProjectOut, Scale
from pathosae.errors import PathosaeError
from pathosae.features import FeatureStore
from pathosae.inputs import load_run_bags
from pathosae.io import read_json, write_text_atomic
from pathosae.saeception.adapter_edits import available_models, measure_adapter_specs, run_bags_splits
from pathosae.schema import SAE_CONFIG, SAECEPTION_DIR, SLIDE_ID, SPLIT

if TYPE_CHECKING:
    from pathosae.app.runview import RunView

OPERATIONS = ("ablate", "scale", "clamp", "project out")
TILES_PER_SLIDE = 32


def direction_choices(directions: dict[str, np.ndarray], d_in: int, d_sae: int) -> list[str]:
    """Named directions an edit can project out: embedding-space or SAE-code-space rows."""
    out = []
    for name, array in sorted(directions.items()):
        if name.endswith((".mean_difference", ".sae_probe")) and array.ndim == 2 and \
                array.shape[1] in (d_in, d_sae):
            out.append(name)
    return out


@dataclass(frozen=True)
class EditForm:
    """What the Edits page's form holds: one operation on units or on a direction."""

    name: str
    operation: str
    units: list[int] | None = None
    factor: float = 0.0
    value: float = 0.0
    direction: str | None = None
    description: str = ""
    model: str | None = None  # an SAE-ception model folder: the edit acts on its adapter layer


def build_spec(
    form: EditForm, d_sae: int | None = None, directions: dict[str, np.ndarray] | None = None
) -> EditSpec:
    """An :class:`~pathosae.edit.spec.EditSpec` from the app's form (validated by pydantic).

    ``form.model`` (an SAE-ception model folder, e.g. ``cycle_3/injected_seed0``) makes it an
    adapter-layer spec: the units are that model's cycle-SAE units. ``d_sae`` and ``directions``
    tell a code-space direction (projected in SAE codes) from an embedding-space one.
    """
    name, operation, direction, model = form.name, form.operation, form.direction, form.model
    units = sorted({int(u) for u in form.units or []})
    if operation in ("ablate", "scale", "clamp") and not units:
        raise PathosaeError(f"{operation} needs at least one unit. Fix: pick units above.")
    if operation == "ablate":
        op: Any = Ablate(units=units)
    elif operation == "scale":
        op = Scale(units=units, factor=float(form.factor))
    elif operation == "clamp":
        op = Clamp(units=units, value=float(form.value))
    elif operation == "project out":
        if not direction:
            raise PathosaeError("project out needs a direction. Fix: pick one of the run's "
                                "confounder directions.")
        width = np.asarray((directions or {}).get(direction, np.zeros((1, 0)))).shape[-1]
        op = ProjectCode(name=direction) if d_sae is not None and width == d_sae else \
            ProjectOut(name=direction)
    else:
        raise PathosaeError(f"unknown operation {operation!r}; use one of {', '.join(OPERATIONS)}.")
    try:
        layer = {"layer": "adapter", "model": model} if model else {}
        return EditSpec(name=name, description=form.description, ops=[op], **layer)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PathosaeError(f"invalid edit: {problems}. Fix: names use letters, digits, '_', '-', "
                            "'.'.") from None


def save_spec(view: RunView, spec: EditSpec) -> tuple[Path, str]:
    """Write RUN/edits/<name>.json atomically; returns the path and the CLI command applying it."""
    path = view.guard.run_file("edits", f"{spec.name}.json")
    write_text_atomic(path, spec.to_json())
    # Adapter-layer specs act inside SAE-ception models: the sharpen stage measures them.
    command = "sharpen" if spec.layer == "adapter" else "edit"
    return path, f"pathosae {command} --run {view.root} --spec {path}"


def adapter_models(view: RunView) -> list[str]:
    """SAE-ception models of the run whose adapter layer an edit can act on."""
    return available_models(view.root / SAECEPTION_DIR)


def adapter_width(view: RunView, model: str) -> int:
    """Number of units of the model's cycle SAE."""
    cfg = read_json(view.guard.run_file("saeception", *model.split("/"), "sae", SAE_CONFIG))
    return int(cfg["hparams"]["d_sae"])


def evaluate_adapter(view: RunView, spec: EditSpec) -> pd.DataFrame:
    """The effect table of an adapter-layer spec on its model (no_edit rows first)."""
    cfg = view.config
    splits, held_out_site = run_bags_splits(view.run, cfg)
    return measure_adapter_specs(view.root / SAECEPTION_DIR, splits, held_out_site, cfg.saeception,
                                 [spec], uncertainty=cfg.uncertainty)


@dataclass
class EditResult:
    effects: pd.DataFrame  # the effect table: no_edit rows first, then the edit
    slides: pd.DataFrame  # test slides with their prediction before/after
    tiles: pd.DataFrame  # test tiles whose single-tile prediction changed


class EditLab:
    """Splits, SAE, directions and the unedited downstream model of one run, built once."""
    def __init__(self, view: RunView, sae_name: str) -> None:

        view.require("embed")
        self.view, self.sae_name = view, sae_name
        cfg = view.config
        self.ecfg = cfg.edit
        variables = self.ecfg.confounders or list(cfg.cohort.confounders)
        bags = load_run_bags(view.run, cfg, self.ecfg.site_column,
                             self.ecfg.downstream.max_tiles_per_slide, self.ecfg.seed, variables,
                             max_tiles=self.ecfg.downstream.max_tiles)
        self.splits, self.held_out_site = cohort_splits(bags, self.ecfg)
        self.sae = view.load_sae(sae_name)
        self.directions = view.directions()
        self.model = train_downstream(self.splits.train, self.ecfg.downstream, self.ecfg.seed)
        self.classes = self.splits.train.classes

    def evaluate(self, spec: EditSpec, modes: tuple[str, ...] = ("applied",)) -> EditResult:

        editor = Editor(spec, self.sae, self.directions)
        candidate = editor_candidate(spec.name, "edit", editor, train_tile_metadata)
        effects = effect_table(self.splits, [candidate], self.ecfg.downstream, self.ecfg.seed,
                               base_model=self.model, modes=modes,
                               leakage_folds=self.ecfg.leakage_folds,
                               uncertainty=self.view.config.uncertainty)
        # effect_table fitted the editor on the training tiles; reuse it for the flips.
        return EditResult(effects, self._slide_flips(editor), self._tile_flips(editor))

    def _slide_flips(self, editor: Any) -> pd.DataFrame:

        pooled = self.splits.pooled_test()
        before = predict_proba(self.model, pooled)
        after = predict_proba(self.model, pooled.with_x(editor.transform(pooled.x).float()))
        return pd.DataFrame({
            SLIDE_ID: pooled.slide_ids, SPLIT: pooled.split, "site": pooled.site,
            "label": [self.classes[i] for i in pooled.y.numpy()],
            "before": [self.classes[i] for i in before.argmax(1)],
            "after": [self.classes[i] for i in after.argmax(1)],
            "p_before": before.max(1).round(3),
            "p_after": after[np.arange(len(after)), before.argmax(1)].round(3),
        }).assign(changed=lambda t: t["before"] != t["after"])

    @torch.no_grad()
    def _tile_flips(self, editor: Any) -> pd.DataFrame:
        """Tiles of the test slides whose prediction as a one-tile bag changes with the edit."""
        view = self.view
        rows = view.slide_rows(self.sae_name)
        test_ids = set(self.splits.pooled_test().slide_ids)
        rows = rows[rows[SLIDE_ID].isin(test_ids)]
        picks = np.concatenate([np.unique(np.linspace(a, b - 1, min(TILES_PER_SLIDE, b - a))
                                          .round().astype(np.int64))
                                for a, b in zip(rows["start"], rows["stop"], strict=True)]) \
            if len(rows) else np.zeros(0, np.int64)
        if not len(picks):
            return pd.DataFrame(columns=["row", SLIDE_ID, "tile", "x", "y", "before", "after"])
        matrix = FeatureStore(view.run, view.features_name(self.sae_name)).matrix()
        x = torch.from_numpy(np.ascontiguousarray(matrix[picks], dtype=np.float32))
        before = self._single_tile_proba(x)
        after = self._single_tile_proba(editor.transform(x).float())
        changed = before.argmax(1) != after.argmax(1)
        index = view.tile_index(self.sae_name).iloc[picks[changed]]
        return pd.DataFrame({
            "row": picks[changed], SLIDE_ID: index[SLIDE_ID].astype(str).to_numpy(),
            "tile": index["tile"].to_numpy(), "x": index["x"].to_numpy(),
            "y": index["y"].to_numpy(),
            "before": [self.classes[i] for i in before.argmax(1)[changed]],
            "after": [self.classes[i] for i in after.argmax(1)[changed]],
        })

    def _single_tile_proba(self, x: torch.Tensor) -> np.ndarray:
        self.model.eval()
        logits, _ = self.model(x[:, None, :], torch.ones(len(x), 1, dtype=torch.bool))
        return torch.softmax(logits, dim=1).numpy()
