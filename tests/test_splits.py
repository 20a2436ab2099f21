"""Train / normal / shifted splits: named manifest splits and leave-one-site-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathosae.config import load_config
from pathosae.downstream import Bags
from pathosae.downstream.config import SplitSettings
from pathosae.downstream.splits import cohort_splits, label_skew, most_label_skewed_site
from pathosae.edit.config import EditConfig
from pathosae.errors import ConfigError, StageError
from pathosae.saeception.config import SAECeptionConfig

LOSO = "leave_one_site_out"


def _bags(rows: list[tuple[str, int, str, str]]) -> Bags:
    """One slide per row: (site, label, split, patient); two tiles per slide."""
    n = len(rows)
    return Bags(
        x=torch.arange(2 * n * 3, dtype=torch.float32).reshape(2 * n, 3),
        slide=torch.arange(n).repeat_interleave(2),
        y=torch.tensor([r[1] for r in rows]), site=np.array([r[0] for r in rows]),
        slide_ids=np.array([f"s{i}" for i in range(n)]), patient=np.array([r[3] for r in rows]),
        split=np.array([r[2] for r in rows]), classes=("neg", "pos"),
    )


def _cohort() -> Bags:
    rows = []
    # Sites A and B: balanced labels over train/val/test. Site C: nearly all positive.
    for site in ("A", "B"):
        for i in range(8):
            rows.append((site, i % 2, ("train", "train", "val", "test")[i % 4], f"{site}{i}"))
    for i in range(5):
        rows.append(("C", int(i > 0), ("train", "val")[i % 2], f"C{i}"))
    rows.append(("A", 1, "train", "C1"))  # patient C1 also has a slide at site A
    return _bags(rows)


def test_leave_one_site_out_moves_every_slide_of_the_site_to_shifted() -> None:
    bags = _cohort()
    splits, held = cohort_splits(bags, SplitSettings(shifted_split=LOSO, held_out_site="C"))
    assert held == "C"
    assert "C" not in set(splits.train.site) and "C" not in set(splits.normal.site)
    assert set(splits.shifted.site) == {"C"}
    assert sorted(splits.shifted.slide_ids) == sorted(bags.slide_ids[bags.site == "C"])
    # The other slide of patient C1 (site A) is on neither side; patients never straddle.
    assert "C1" not in set(splits.train.patient) | set(splits.normal.patient)
    assert set(splits.train.split) == {"train"} and set(splits.normal.split) == {"val"}
    # Tiles follow their slides.
    assert splits.shifted.x.shape[0] == 2 * splits.shifted.n_slides


def test_automatic_pick_is_the_most_label_skewed_site() -> None:
    bags = _cohort()
    skew = label_skew(bags)
    assert max(skew, key=skew.get) == "C"
    assert most_label_skewed_site(bags) == "C"
    assert cohort_splits(bags, SplitSettings(shifted_split=LOSO))[1] == "C"


def test_automatic_pick_skips_a_site_that_holds_all_training_slides_of_a_class() -> None:
    rows = [("A", 0, "train", "a0"), ("A", 0, "train", "a1"), ("A", 0, "val", "a2"),
            ("A", 1, "val", "a3"), ("B", 0, "train", "b0"), ("B", 0, "train", "b1"),
            ("B", 1, "val", "b2"), ("C", 1, "train", "c0"), ("C", 1, "train", "c1"),
            ("C", 1, "val", "c2")]
    bags = _bags(rows)
    skew = label_skew(bags)
    assert skew["C"] > skew["A"] > skew["B"]
    # C is the most skewed but holds every training slide of class 1: the next one is held out.
    splits, held = cohort_splits(bags, SplitSettings(shifted_split=LOSO))
    assert held == "A" and set(splits.shifted.site) == {"A"}
    with pytest.raises(StageError, match=r"site 'C' leaves no training slide"):
        cohort_splits(bags, SplitSettings(shifted_split=LOSO, held_out_site="C"))


def test_ties_go_to_the_first_site_by_name() -> None:
    rows = [(s, i % 2, "train" if i < 4 else "val", f"{s}{i}") for s in ("B", "A") for i in range(6)]
    assert most_label_skewed_site(_bags(rows)) == "A"


def test_unknown_site_and_emptied_class_are_clear_errors() -> None:
    bags = _cohort()
    with pytest.raises(StageError, match=r"'Z' is not a site.*\['A', 'B', 'C'\].*Fix"):
        cohort_splits(bags, SplitSettings(shifted_split=LOSO, held_out_site="Z"))
    rows = [("A", 0, "train", "p0"), ("A", 0, "train", "p1"), ("B", 1, "train", "p2"),
            ("B", 1, "val", "p3"), ("A", 0, "val", "p4"), ("B", 0, "train", "p5")]
    with pytest.raises(StageError, match=r"site 'B' leaves no training slide of class\(es\) \['pos'\]"):
        cohort_splits(_bags(rows), SplitSettings(shifted_split=LOSO, held_out_site="B"))


def test_named_splits_are_unchanged() -> None:
    bags = _cohort()
    splits, held = cohort_splits(bags, SplitSettings())
    assert held is None and set(splits.shifted.split) == {"test"}


def test_both_stage_configs_take_the_option_and_refuse_a_stray_site(tmp_path) -> None:
    for section in (EditConfig, SAECeptionConfig):
        cfg = section(shifted_split=LOSO, held_out_site="C")
        assert cfg.held_out_site == "C"
        with pytest.raises(ValueError, match="held_out_site"):
            section(held_out_site="C")
    path = tmp_path / "c.yaml"
    path.write_text("edit:\n  held_out_site: C\n")
    with pytest.raises(ConfigError, match="held_out_site"):
        load_config(path)
