"""croma's robustness metrics of a representation: RI, MaRI and CRoMa with their support.

``croma`` (PyPI, Apache-2.0) scores how far a representation's neighbourhoods follow the biology
(the label) rather than a confounder (site, scanner, ...). Every sample's neighbours sharing its
independence group (``group_id``: here the patient, or the slide) are never eligible, and
distances are cosine distances of the L2-normalised vectors. Per sample, an SO neighbour has the
same label and another confounder level, an OS neighbour the other way round.

- ``ri``: PathoROB's robustness index, ΣSO / (ΣSO + ΣOS) over every sample's k nearest
  neighbours, at the ``k`` of ``k_candidates`` with the best kNN balanced accuracy of the label
  (``ri_k``); ``ri_support``: the fraction of samples with an SO or OS neighbour within k.
- ``mari``: the margin-aware RI, each neighbour weighted by exp(−d/τ), τ the median SO/OS
  neighbour distance (``mari_tau``); same k and support as RI.
- ``croma``: the median over samples of (d_OS − d_SO) / (d_OS + d_SO), d the mean distance to the
  ``m`` nearest SO / OS neighbours: in (−1, 1), > 0 when biology dominates. ``croma_ltm``: the
  mean of its worst 10 % of samples; ``croma_f0``: the fraction of samples ≤ 0 (confounder-
  dominant). croma defines CRoMa only when every sample has ``m`` SO and ``m`` OS candidates
  outside its group; ``croma_support`` is that fraction of the samples, and where it is below 1
  CRoMa is computed on the scoreable samples only (found by repeatedly dropping the samples that
  lack candidates; ``croma_reason`` says how many were left out), so read it beside its support.
- ``croma_reason``: why a metric is NaN or partial (too few classes, levels or samples), empty
  when all is well. Nothing here raises for a small cohort.

All of it is deterministic: croma's neighbour search is exact, and the optional ``max_samples``
cap draws the same rows for a seed (the same rows for every representation of a confounder).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from pathosae.schema import PATIENT_ID

#: croma's quick-start candidates for the operating k of RI and MaRI.
K_CANDIDATES: tuple[int, ...] = (5, 11, 21)
#: croma's headline CRoMa averaging radius.
CROMA_M = 5
#: Every column :func:`croma_metrics` returns.
CROMA_COLUMNS = ("ri", "ri_k", "ri_support", "mari", "mari_tau", "croma", "croma_ltm", "croma_f0",
                 "croma_support", "croma_n", "croma_reason")
_CONFOUNDER = "confounder"


def _nan_metrics(reason: str) -> dict[str, object]:
    out: dict[str, object] = dict.fromkeys(CROMA_COLUMNS, float("nan"))
    out.update(ri_k=-1, croma_n=0, croma_reason=reason, ri_support=0.0, croma_support=0.0)
    return out


def _manifest(label: np.ndarray, confounder: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """croma's manifest contract: sample_id, image_path, label, group_id and the confounder."""
    n = len(label)
    return pd.DataFrame({
        "sample_id": np.arange(n).astype(str), "image_path": "", "label": label,
        "group_id": groups, _CONFOUNDER: confounder,
    })


def typed_candidates(
    label: np.ndarray, confounder: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, how many SO and OS candidates exist outside its own group."""
    frame = pd.DataFrame({"y": pd.factorize(label)[0], "c": pd.factorize(confounder)[0],
                          "g": pd.factorize(groups)[0]})

    def size(*cols: str) -> np.ndarray:
        return frame.groupby(list(cols))["y"].transform("size").to_numpy()

    n_y, n_c, n_yc, n_yg, n_cg, n_ycg = (size("y"), size("c"), size("y", "c"), size("y", "g"),
                                         size("c", "g"), size("y", "c", "g"))
    return n_y - n_yc - n_yg + n_ycg, n_c - n_yc - n_cg + n_ycg


def croma_scoreable(
    label: np.ndarray, confounder: np.ndarray, groups: np.ndarray, m: int = CROMA_M
) -> np.ndarray:
    """The largest set of samples each with ``m`` SO and ``m`` OS candidates within the set."""
    keep = np.ones(len(label), dtype=bool)
    while keep.any():
        so, os_ = typed_candidates(label[keep], confounder[keep], groups[keep])
        ok = (so >= m) & (os_ >= m)
        if ok.all():
            break
        keep[np.flatnonzero(keep)[~ok]] = False
    return keep


def _ri_mari(x: np.ndarray, manifest: pd.DataFrame, ks: list[int]) -> dict[str, object]:
    from croma import RI, MaRI

    ri = RI.compute(x, manifest, confounder_column=_CONFOUNDER, k_candidates=ks)
    mari = MaRI.compute(x, manifest, confounder_column=_CONFOUNDER, k_candidates=ks)
    defined = ri.support > 0  # croma reports 0.5 where no sample has an SO or OS neighbour
    return {"ri": float(ri.value) if defined else float("nan"), "ri_k": int(ri.k),
            "ri_support": float(ri.support),
            "mari": float(mari.value) if defined else float("nan"),
            "mari_tau": float(mari.tau) if defined else float("nan")}  # else croma's fallback


def _croma(x: np.ndarray, manifest: pd.DataFrame, m: int) -> dict[str, object]:
    from croma import CRoMa

    result = CRoMa.compute(x, manifest, confounder_column=_CONFOUNDER, m=m)
    assert not isinstance(result, dict)  # one m in, one result out
    return {"croma": float(result.value), "croma_ltm": float(result.ltm_alpha),
            "croma_f0": float(result.f0)}


def croma_metrics(
    x: np.ndarray,
    label: np.ndarray,
    confounder: np.ndarray,
    groups: np.ndarray | None = None,
    k_candidates: Sequence[int] = K_CANDIDATES,
    m: int = CROMA_M,
) -> dict[str, object]:
    """RI, MaRI and CRoMa of ``x`` (samples × dims) for one label and one confounder.

    ``groups`` is each sample's independence group (patient or slide; None: every sample its
    own). Returns the :data:`CROMA_COLUMNS`; NaN with ``croma_reason`` where a metric has no
    meaning on these samples.
    """
    x = np.asarray(x, dtype=np.float64)
    label, confounder = np.asarray(label).astype(str), np.asarray(confounder).astype(str)
    n = len(label)
    groups = np.arange(n).astype(str) if groups is None else np.asarray(groups).astype(str)
    if not (x.ndim == 2 and x.shape[0] == n == len(confounder) == len(groups)):
        raise ValueError(f"{x.shape} embeddings for {n} labels / {len(confounder)} levels / "
                         f"{len(groups)} groups")
    n_lab, n_conf = len(np.unique(label)), len(np.unique(confounder))
    if n_lab < 2 or n_conf < 2 or len(np.unique(groups)) < 2:
        return _nan_metrics(f"needs 2+ classes, levels and groups ({n} samples, {n_lab} "
                               f"classes, {n_conf} levels)")
    if not np.isfinite(x).all():
        return _nan_metrics("the representation holds NaN or inf")
    out: dict[str, object] = {}
    reasons: list[str] = []
    ks = sorted({int(k) for k in k_candidates if 0 < int(k) < n})
    with warnings.catch_warnings():
        # croma warns on partial support and on a degenerate tau; both are columns here
        warnings.simplefilter("ignore", RuntimeWarning)
        if ks:
            out.update(_ri_mari(x, _manifest(label, confounder, groups), ks))
            if not out["ri_support"]:
                reasons.append("RI/MaRI: no sample has an SO or OS neighbour within k")
        else:
            reasons.append(f"RI/MaRI: {n} samples, fewer than any k of {list(k_candidates)}")
        keep = croma_scoreable(label, confounder, groups, m)
        out.update(croma_support=float(keep.mean()), croma_n=int(keep.sum()))
        if not keep.any():
            reasons.append(f"CRoMa: no sample has {m} same-class other-level and {m} other-class "
                           "same-level samples outside its group")
        else:
            if not keep.all():
                reasons.append(f"CRoMa on the {int(keep.sum())} of {n} samples with {m} SO and "
                               f"{m} OS candidates")
            try:
                out.update(_croma(x[keep], _manifest(label[keep], confounder[keep], groups[keep]), m))
            except RuntimeError as exc:  # e.g. a collapsed representation: zero margins
                reasons.append(f"CRoMa: {exc}")
    full = _nan_metrics("")
    full.update(out)
    full["croma_reason"] = "; ".join(reasons)
    return full


#: The representations of some rows of ``meta`` (row indices in, name -> rows × dims out).
RepresentationsOf = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def robustness_table(  # noqa: PLR0913 - the metric's data and its few knobs
    representations: Mapping[str, np.ndarray] | RepresentationsOf,
    meta: pd.DataFrame,
    label: str,
    confounders: list[str],
    group_column: str | None = PATIENT_ID,
    k_candidates: Sequence[int] = K_CANDIDATES,
    m: int = CROMA_M,
    max_samples: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per representation × confounder: the :data:`CROMA_COLUMNS` and ``n``.

    Rows of ``meta`` (aligned with every representation) without a label or level are left out;
    ``max_samples`` caps the rows scored (a seeded draw, the same for every representation).
    ``representations`` may be a function of the drawn rows instead of whole matrices, so that
    representations computed on demand (SAE codes) exist for the scored rows only.
    ``group_column`` (default the patient; None or absent: every row its own group) keeps a
    sample's own slide/patient out of its neighbours.
    """
    reps_of = (representations if callable(representations) else
               lambda index: {name: np.asarray(x)[index] for name, x in representations.items()})
    rows: list[dict[str, object]] = []
    for conf in confounders:
        known = (meta[label].notna() & meta[conf].notna()).to_numpy()
        index = np.flatnonzero(known)
        if max_samples is not None and len(index) > max_samples:
            rng = np.random.default_rng(seed)
            index = np.sort(rng.choice(index, max_samples, replace=False))
        lab = meta[label].astype(str).to_numpy()[index]
        cen = meta[conf].astype(str).to_numpy()[index]
        groups = (meta[group_column].astype(str).to_numpy()[index]
                  if group_column is not None and group_column in meta else None)
        for name, x in reps_of(index).items():
            metrics = croma_metrics(x, lab, cen, groups, k_candidates, m)
            rows.append({"representation": name, "label": label, "confounder": conf,
                         **metrics, "n": len(index)})
    return pd.DataFrame(rows)


def croma_ri(
    x: np.ndarray, label: np.ndarray, confounder: np.ndarray, groups: np.ndarray | None = None,
    k: int = 10,
) -> tuple[float, float]:
    """croma's RI at a fixed ``k`` (capped at samples − 1) and its support; NaN where undefined
    (fewer than 2 classes, levels or groups, or no sample with an SO or OS neighbour)."""
    from croma import RI

    label, confounder = np.asarray(label).astype(str), np.asarray(confounder).astype(str)
    n = len(label)
    groups = np.arange(n).astype(str) if groups is None else np.asarray(groups).astype(str)
    k = min(int(k), n - 1)
    if k < 1 or min(len(np.unique(a)) for a in (label, confounder, groups)) < 2:
        return float("nan"), 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # partial support: returned beside it
        result = RI.compute(np.asarray(x, dtype=np.float64), _manifest(label, confounder, groups),
                            confounder_column=_CONFOUNDER, k_candidates=[k])
    support = float(result.support)
    return (float(result.value) if support > 0 else float("nan")), support
