"""Train / normal-test / shifted-test splits of a cohort's bags.

The shifted test is either a named split of the manifest (the synthetic generator writes one
with the label–site link reversed) or, on a real cohort, one held-out site: every slide of that
site is tested and none trains (leave-one-site-out).

The normal test is the manifest's ``normal_split`` (``val``); a cohort without one (a manifest
with only train and test, a common layout) gets it from held-out training patients:
:func:`derive_normal_split` moves a seeded share of them per class (``derived_normal_fraction``)
into it, and :attr:`Splits.normal_source` says so for the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pathosae.downstream.bags import Bags, concat_bags
from pathosae.downstream.config import LEAVE_ONE_SITE_OUT, SplitSettings
from pathosae.errors import StageError

MIN_TRAIN_SLIDES_PER_CLASS = 2
MIN_EVAL_SLIDES = 2
DERIVED_NORMAL_SEED = 0  # one draw for every stage, so the edit and sharpen tables agree


@dataclass
class Splits:
    """Training slides, a held-out split with the training correlation and a shifted one.

    ``normal_source`` says where the normal test comes from: ``split 'val'``, or the share of
    training patients it was derived from when the cohort has no such split.
    """

    train: Bags
    normal: Bags
    shifted: Bags
    normal_source: str = field(default="", init=False)  # set by cohort_splits

    def pooled_test(self) -> Bags:
        return concat_bags([self.normal, self.shifted])

    def pooled_test_index(self) -> Bags:
        """``pooled_test()`` without its tile embeddings (``x`` has no columns): the slides,
        their labels and sites and each tile's slide, for what needs no features."""
        return concat_bags([b.with_x(b.x[:, :0]) for b in (self.normal, self.shifted)])

    def pooled_test_rows(self, rows: np.ndarray) -> Tensor:
        """The embeddings of ``rows`` of ``pooled_test()`` (its tile order), taken from the two
        test splits without concatenating them."""
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        n_normal = self.normal.x.shape[0]
        out = self.normal.x.new_empty((len(index), self.normal.dim))
        first = index < n_normal
        out[first] = self.normal.x[index[first]]
        out[~first] = self.shifted.x[index[~first] - n_normal]
        return out


def cohort_splits(bags: Bags, settings: SplitSettings) -> tuple[Splits, str | None]:
    """The splits ``settings`` name, and the held-out site (None unless leave-one-site-out).

    Without slides in the normal split, it is derived from training patients first."""
    bags, source = derive_normal_split(bags, settings)
    splits, site = _named_splits(bags, settings)
    splits.normal_source = source
    return splits, site


def _named_splits(bags: Bags, settings: SplitSettings) -> tuple[Splits, str | None]:
    if settings.shifted_split != LEAVE_ONE_SITE_OUT:
        return make_splits(bags, settings.train_split, settings.normal_split,
                           settings.shifted_split), None
    train, normal = settings.train_split, settings.normal_split
    if settings.held_out_site is not None:
        site = settings.held_out_site
        return leave_one_site_out(bags, train, normal, site), site
    # Automatic: the most label-skewed site that leaves every class trainable and the tests
    # scorable (the most skewed one often holds all the training slides of a class).
    problems = []
    for site in sites_by_skew(bags):
        try:
            return leave_one_site_out(bags, train, normal, site), site
        except StageError as exc:
            problems.append(str(exc).split(" Fix:")[0])
    raise StageError(
        f"no site can be held out: {'; '.join(problems)}. Fix: name a shifted split of the "
        "manifest in shifted_split, or add slides so a site can leave training."
    )


def derive_normal_split(bags: Bags, settings: SplitSettings) -> tuple[Bags, str]:
    """The bags with a normal split, and where it comes from.

    A cohort with slides in ``normal_split`` is returned as is. Otherwise a seeded
    ``derived_normal_fraction`` of the training patients of each class (a patient's class is that
    of its first slide; at least one, never all) is relabelled ``normal_split``: the normal test
    then keeps the training correlation, as a ``val`` split of the manifest would.
    """
    normal, train = settings.normal_split, settings.train_split
    if (bags.split == normal).any():
        return bags, f"split {normal!r}"
    is_train = bags.split == train
    if not is_train.any():
        return bags, f"split {normal!r}"  # make_splits names the missing training split
    fraction = settings.derived_normal_fraction
    held = held_out_patients(bags.patient[is_train], bags.y.numpy()[is_train], fraction,
                             DERIVED_NORMAL_SEED)
    if not held:
        raise StageError(
            f"the cohort has no slide in split {normal!r}, and its training split is too small "
            f"to hold out {fraction:.0%} of its patients as the normal test. Fix: add a "
            f"'{normal}' split to the manifest's split column, or add training patients."
        )
    split = np.where(is_train & np.isin(bags.patient, sorted(held)), normal, bags.split)
    source = (f"derived: {fraction:.0%} of training patients ({len(held)} patients, seed "
              f"{DERIVED_NORMAL_SEED}); the cohort has no {normal!r} split")
    return replace(bags, split=split), source


def held_out_patients(patients: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the patients of each class (round, at least one, never all)."""
    rng = np.random.default_rng(seed)
    first = pd.DataFrame({"patient": patients, "y": y}).drop_duplicates("patient")
    held: set[str] = set()
    for _, group in first.groupby("y", sort=True):
        names = np.array(sorted(group["patient"].astype(str)), dtype=object)
        n_out = min(max(1, round(fraction * len(names))), len(names) - 1)
        if n_out >= 1:
            held |= set(rng.choice(names, size=n_out, replace=False).tolist())
    return held


def label_skew(bags: Bags) -> dict[str, float]:
    """Per site, the total-variation distance between its class mix and the rest of the cohort's."""
    y, n_classes = bags.y.numpy(), len(bags.classes)
    out = {}
    for s in sorted(set(bags.site.tolist())):
        here = bags.site == s
        mix = np.bincount(y[here], minlength=n_classes) / here.sum()
        rest = np.bincount(y[~here], minlength=n_classes) / max(int((~here).sum()), 1)
        out[s] = float(0.5 * np.abs(mix - rest).sum())
    return out


def sites_by_skew(bags: Bags) -> list[str]:
    """Sites from the most label-skewed to the least (ties: by name)."""
    skew = label_skew(bags)
    if len(skew) < 2:
        raise StageError(
            f"leave-one-site-out needs two or more sites; the cohort has {sorted(skew)}. "
            "Fix: name a shifted split of the manifest in shifted_split instead."
        )
    return sorted(skew, key=lambda s: (-round(skew[s], 12), s))


def most_label_skewed_site(bags: Bags) -> str:
    """The site whose label mix differs most from the rest of the cohort (ties: first by name)."""
    return sites_by_skew(bags)[0]


def leave_one_site_out(bags: Bags, train: str, normal: str, site: str) -> Splits:
    """Every slide of ``site`` is the shifted test; the train and normal splits lose them and
    every other slide of their patients (a patient is never on both sides)."""
    sites = sorted(set(bags.site.tolist()))
    if site not in sites:
        raise StageError(
            f"held_out_site {site!r} is not a site of the cohort (sites: {sites}). "
            "Fix: set held_out_site to one of them, or to null for the automatic choice."
        )
    held = bags.site == site
    straddles = np.isin(bags.patient, np.unique(bags.patient[held])) & ~held
    keep = ~held & ~straddles
    train_keep = keep & (bags.split == train)
    counts = np.bincount(bags.y.numpy()[train_keep], minlength=len(bags.classes))
    empty = [bags.classes[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        raise StageError(
            f"holding out site {site!r} leaves no training slide of class(es) {empty} (split "
            f"{train!r}). Fix: set held_out_site to another site (sites: {sites})."
        )
    splits = Splits(bags.subset(train_keep), bags.subset(keep & (bags.split == normal)),
                    bags.subset(held))
    check_splits(splits, bags.classes, train, normal, f"held-out site {site!r}")
    return splits


def make_splits(bags: Bags, train: str, normal: str, shifted: str) -> Splits:
    """Train / normal-test / shifted-test bags from three named splits of the manifest."""
    splits = Splits(bags.split_of(train), bags.split_of(normal), bags.split_of(shifted))
    check_splits(splits, bags.classes, train, normal, f"split {shifted!r}")
    return splits


def check_splits(splits: Splits, classes: tuple[str, ...], train: str, normal: str,
                 shifted: str) -> None:
    """The downstream model needs every class in training and the tests need some slides; a
    cohort too small for that gets one error naming the split and the fix."""
    counts = np.bincount(splits.train.y.numpy(), minlength=len(classes))
    short = [classes[c] for c, n in enumerate(counts) if n < MIN_TRAIN_SLIDES_PER_CLASS]
    if short:
        raise StageError(
            f"split {train!r} has fewer than {MIN_TRAIN_SLIDES_PER_CLASS} slides of class(es) "
            f"{short} (slides per class: {dict(zip(classes, counts.tolist(), strict=True))}). "
            "Fix: add slides of those classes, or move patients into the training split "
            "(cohort.split fractions or the manifest's split column)."
        )
    for name, part in ((f"split {normal!r}", splits.normal), (shifted, splits.shifted)):
        if part.n_slides < MIN_EVAL_SLIDES:
            raise StageError(
                f"{name} has {part.n_slides} slide(s); the downstream evaluation needs "
                f"at least {MIN_EVAL_SLIDES}. Fix: give it more patients (cohort.split fractions "
                "or the manifest's split column)."
            )


def train_tile_metadata(splits: Splits) -> dict[str, np.ndarray]:
    """Per training tile: its site, label and metadata columns (what an edit is fitted on)."""
    train = splits.train
    meta = {"site": train.tile_site(), "label": train.tile_y().numpy()}
    meta.update({k: v[train.slide.numpy()] for k, v in train.meta.items()})
    return meta
