"""PathoROB robustness metrics on embeddings: robustness index, clustering score, centre AUROC.

- Robustness index: over each sample's k nearest neighbours, count SO (same class, other
  confounder level) and OS (other class, same confounder level); RI = ΣSO / (ΣSO + ΣOS). 1 means
  neighbours follow the biology, 0 that they follow the centre. The table's ``robustness_index``
  is croma's RI (:func:`pathosae.confounders.robustness.croma_ri`, the field's reference
  implementation) at the table's ``k``, with ``robustness_index_support`` (the fraction of
  samples with an SO or OS neighbour within k). It differs from this module's own
  :func:`robustness_index` (kept for reference) in two ways, so the two do not agree on the same
  data and k (tests/test_croma.py): croma ranks neighbours by cosine distance of L2-normalised
  vectors, not Euclidean distance of the raw ones, and it never counts a neighbour from the
  sample's own independence group (here ``group_column``, the patient), where this module only
  drops the sample itself, so tiles of the same slide crowd the neighbourhood. On L2-normalised
  vectors with every sample its own group the two are equal.
- Clustering score: ARI(label) − ARI(confounder) of one k-means clustering (k = number of label
  classes unless given): positive when the embedding's own grouping follows the biology.
- Confounder AUROC: cross-validated logistic regression (patient folds), from ``leakage``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from pathosae.confounders.leakage import probe_leakage
from pathosae.confounders.robustness import croma_ri
from pathosae.errors import PathosaeError
from pathosae.schema import PATIENT_ID


def _check(x: np.ndarray, *labels: np.ndarray) -> None:
    for lab in labels:
        if len(lab) != x.shape[0]:
            raise PathosaeError(f"{x.shape[0]} embeddings but {len(lab)} labels.")


def robustness_index(
    x: np.ndarray, label: np.ndarray, confounder: np.ndarray, k: int = 10
) -> float:
    """RI = SO / (SO + OS) over the k nearest neighbours of every sample (Euclidean, only the
    sample itself excluded): the project's own definition; the table reports croma's RI."""
    label, confounder = np.asarray(label).astype(str), np.asarray(confounder).astype(str)
    _check(x, label, confounder)
    k = min(k, x.shape[0] - 1)
    if k < 1:
        return float("nan")
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
    neighbours = _drop_self(neighbours)[:, :k]
    same_label = label[neighbours] == label[:, None]
    same_conf = confounder[neighbours] == confounder[:, None]
    so = int((same_label & ~same_conf).sum())
    os_ = int((~same_label & same_conf).sum())
    return so / (so + os_) if so + os_ else float("nan")


def _drop_self(neighbours: np.ndarray) -> np.ndarray:
    """Remove each row's own index (duplicates may put it anywhere among the first columns)."""
    own = np.arange(len(neighbours))[:, None]
    keep = neighbours != own
    # rows whose own index was not returned (exact duplicates) drop their last neighbour instead
    missing = keep.all(axis=1)
    keep[missing, -1] = False
    return neighbours[keep].reshape(len(neighbours), -1)


def clustering_score(
    x: np.ndarray,
    label: np.ndarray,
    confounder: np.ndarray,
    n_clusters: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """ARI(label) − ARI(confounder) of one k-means clustering of ``x``."""
    label, confounder = np.asarray(label).astype(str), np.asarray(confounder).astype(str)
    _check(x, label, confounder)
    k = n_clusters or len(np.unique(label))
    clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
    ari_label = adjusted_rand_score(label, clusters)
    ari_conf = adjusted_rand_score(confounder, clusters)
    return {
        "ari_label": float(ari_label),
        "ari_confounder": float(ari_conf),
        "clustering_score": float(ari_label - ari_conf),
    }


def pathorob_table(
    representations: dict[str, np.ndarray],
    metadata: pd.DataFrame,
    label: str,
    confounders: list[str],
    k: int = 10,
    n_folds: int = 5,
    seed: int = 0,
    group_column: str = PATIENT_ID,
) -> pd.DataFrame:
    """All three metrics per representation × confounder (rows with a known label and level);
    the robustness index is croma's, neighbours of the same ``group_column`` value excluded."""
    rows = []
    for conf in confounders:
        known = (metadata[label].notna() & metadata[conf].notna()).to_numpy()
        lab = metadata[label].astype(str).to_numpy()[known]
        cen = metadata[conf].astype(str).to_numpy()[known]
        groups = metadata[group_column].astype(str).to_numpy()[known]
        if len(np.unique(lab)) < 2 or len(np.unique(cen)) < 2:
            continue
        for name, x in representations.items():
            xs = np.asarray(x, dtype=np.float64)[known]
            # Only the AUROC enters the table: no permutation null (its fits cost more than the probe).
            auroc = probe_leakage(xs, cen, groups, n_folds, seed, n_null=0)
            ri, ri_support = croma_ri(xs, lab, cen, groups, k)
            rows.append({
                "representation": name,
                "label": label,
                "confounder": conf,
                "k": k,
                "robustness_index": ri,
                "robustness_index_support": ri_support,
                **clustering_score(xs, lab, cen, seed=seed),
                "confounder_auroc": auroc.auroc if auroc else float("nan"),
                "n": int(known.sum()),
            })
    return pd.DataFrame(rows)
