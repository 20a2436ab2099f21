"""Progress on stderr: the shared helpers, and real stage code that shows a bar or step lines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pathosae import progress
from pathosae.config import load_config
from pathosae.confounders.collect import Identity, collect
from pathosae.confounders.controls import permuted_null_repeats
from pathosae.edit.defaults import ticking
from pathosae.edit.effects import Candidate, missing_candidate


def test_bar_yields_every_item_and_draws_on_stderr(capsys) -> None:
    items = list(progress.bar(range(5), "demo: items", unit="item"))
    out = capsys.readouterr()
    assert items == [0, 1, 2, 3, 4]
    assert "demo: items" in out.err and out.out == ""


def test_step_writes_one_stage_line_on_stderr(capsys) -> None:
    progress.step("confounders", "leakage probes")
    out = capsys.readouterr()
    assert out.err == "[confounders] leakage probes\n" and out.out == ""


def test_ticker_counts_items_started_and_completes(capsys) -> None:
    with progress.ticker("demo: ticks", 3, unit="edit") as tick:
        for name in ("a", "b", "c"):
            tick(name)
    assert "demo: ticks" in capsys.readouterr().err


def test_ticking_candidates_tick_in_order_and_keep_their_results() -> None:
    seen: list[str] = []
    candidates = [Candidate("double", "edit", lambda s: 2 * s, n_units=3),
                  missing_candidate("absent", "no features"),
                  Candidate("negate", "baseline", lambda s: -s)]
    wrapped = ticking(candidates, seen.append)
    assert [c.edit(5) for c in wrapped if c.edit is not None] == [10, -5]
    assert seen == ["double", "negate"]
    assert wrapped[1] is candidates[1]
    assert (wrapped[0].name, wrapped[0].kind, wrapped[0].n_units) == ("double", "edit", 3)
    assert candidates[0].edit is not wrapped[0].edit  # the caller's list is left as it was


class _Store:
    """A tiny in-memory feature store (what ``collect`` reads of a FeatureStore)."""

    def __init__(self, n_slides: int, tiles: int, dim: int) -> None:
        rng = np.random.default_rng(0)
        self.slide_ids = [f"s{i}" for i in range(n_slides)]
        self._features = {s: rng.normal(size=(tiles, dim)).astype(np.float32) for s in self.slide_ids}

    def load(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self._features[slide_id], np.zeros((len(self._features[slide_id]), 2))


def test_confounder_collect_shows_a_slide_bar_and_is_unchanged_by_it(capsys, monkeypatch) -> None:
    store = _Store(6, 10, 4)
    cohort = pd.DataFrame({"slide_id": store.slide_ids, "site": list("AABBCC")})
    cfg = load_config(None, {})
    data = collect(store, Identity(), cohort, cfg, "stop")
    err = capsys.readouterr().err
    assert "confounders: slides" in err
    assert data.embedding_mean.shape == (6, 4)

    # The same pass with the bar replaced by the bare iterable gives the same numbers.
    monkeypatch.setattr("pathosae.confounders.collect.bar", lambda items, *_args, **_kwargs: items)
    plain = collect(store, Identity(), cohort, cfg, "stop")
    assert capsys.readouterr().err == ""
    assert np.array_equal(plain.tile_features, data.tile_features)
    assert all(np.array_equal(plain.codes[k], data.codes[k]) for k in data.codes)


def test_permuted_null_shows_a_repeat_bar(capsys) -> None:
    rng = np.random.default_rng(0)
    slides = pd.DataFrame({"site": rng.choice(["A", "B"], 20)})
    null = permuted_null_repeats({"mean": rng.normal(size=(20, 5))}, slides, ["site"], [], {},
                                 0.05, seed=1, repeats=3)
    assert len(null) == 3
    assert "permuted-metadata null" in capsys.readouterr().err

