"""Unit tables for the app: sorting and searching units, a unit's associations, similar units."""

from __future__ import annotations

import numpy as np
import pandas as pd

SORTS = ("frequency", "label association", "association with a column", "max activation", "unit")


def best_associations(associations: pd.DataFrame | None) -> pd.DataFrame:
    """Per unit and variable: the smallest slide-level q (over aggregations) and its effect."""
    if associations is None or associations.empty:
        return pd.DataFrame(columns=["unit", "variable", "q", "effect"])
    table = associations
    if "level" in table:
        table = table[table["level"] == "slide"]
    table = table.dropna(subset=["q"]).sort_values("q", kind="stable")
    return table.drop_duplicates(["unit", "variable"])[["unit", "variable", "q", "effect"]]


def unit_table(
    units: pd.DataFrame, associations: pd.DataFrame | None, tags: dict[int, str]
) -> pd.DataFrame:
    """One row per unit: frequency, activation, tag and ``q_<column>`` / ``effect_<column>``."""
    table = units.copy()
    best = best_associations(associations)
    for variable, group in best.groupby("variable", sort=True):
        per_unit = group.set_index("unit")
        table[f"q_{variable}"] = table["unit"].map(per_unit["q"])
        table[f"effect_{variable}"] = table["unit"].map(per_unit["effect"])
    table["tag"] = table["unit"].map(tags).fillna("")
    return table


def association_columns(table: pd.DataFrame) -> list[str]:
    return [c[2:] for c in table.columns if c.startswith("q_")]


def sort_units(
    table: pd.DataFrame, sort: str, column: str | None = None, label: str | None = None,
    search: str = "", hide_dead: bool = True,
) -> pd.DataFrame:
    """Order units for the picker; ``search`` matches unit ids or tags (comma-separated ids ok)."""
    view = table[table["n_tiles"] > 0] if hide_dead else table
    search = search.strip()
    if search:
        ids = [int(t) for t in search.replace(",", " ").split() if t.isdigit()]
        view = view[view["unit"].isin(ids)] if ids else view[
            view["tag"].str.contains(search, case=False, na=False)]
    if sort == "frequency":
        return view.sort_values(["frequency", "unit"], ascending=[False, True])
    if sort == "max activation":
        return view.sort_values(["max", "unit"], ascending=[False, True])
    if sort in ("label association", "association with a column"):
        name = label if sort == "label association" else column
        key = f"q_{name}"
        if name is None or key not in view:
            return view.sort_values("unit")
        return view.sort_values([key, "unit"], na_position="last")
    return view.sort_values("unit")


def unit_associations(associations: pd.DataFrame | None, unit: int) -> pd.DataFrame:
    """Every test of one unit (each metadata column, aggregation and level), smallest q first."""
    if associations is None:
        return pd.DataFrame()
    rows = associations[associations["unit"] == int(unit)]
    keep = [c for c in ("variable", "level", "aggregation", "kind", "effect", "direction", "p", "q",
                        "flagged", "mm_p", "perm_p", "n_slides") if c in rows]
    return rows[keep].sort_values(["q", "variable"], na_position="last").reset_index(drop=True)


def unit_normed_decoder(w_dec: np.ndarray) -> np.ndarray:
    w = np.asarray(w_dec, dtype=np.float32)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return np.divide(w, norms, out=np.zeros_like(w), where=norms > 0)


def similar_units(normed_decoder: np.ndarray, unit: int, n: int = 10) -> pd.DataFrame:
    """Units whose decoder atom points closest to ``unit``'s (cosine), itself excluded."""
    cosine = normed_decoder @ normed_decoder[int(unit)]
    cosine[int(unit)] = -np.inf
    n = min(n, len(cosine) - 1)
    pick = np.argpartition(-cosine, n - 1)[:n] if n > 0 else np.zeros(0, int)
    pick = pick[np.argsort(-cosine[pick], kind="stable")]
    return pd.DataFrame({"unit": pick.astype(int), "cosine": cosine[pick].astype(float)})
