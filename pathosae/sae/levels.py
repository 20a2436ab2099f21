"""Confounder level vocabularies and the per-row level codes the confounder-aware SAEs train on.

A *vocabulary* is an ordered mapping ``confounder column -> level names`` (names are strings, so a
site stored as ``3`` in one table and ``3.0`` in another is the same level ``"3"``). *Conditions*
are an ``int64`` matrix, one row per feature row and one column per confounder, holding the level's
position in its vocabulary, or ``-1`` where the value is missing or was not seen in training.

The vocabulary is built from the training rows only and saved in the SAE's ``cfg.json``, so a
loaded model maps the level names of any table to the codes it was trained with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pathosae.errors import PathosaeError

UNKNOWN = -1
"""The code of a missing value or of a level not in the vocabulary."""

Levels = dict[str, list[str]]
LevelsLike = Mapping[str, Sequence[Any]] | Sequence[Sequence[Any]]
"""A vocabulary as a mapping, or as ``[name, [level, ...]]`` pairs (how cfg.json stores it: its
keys are written sorted, and the confounder order must survive)."""


def level_name(value: Any) -> str | None:
    """The string a level is known by; None for a missing value (integral floats lose '.0')."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def normalise_levels(levels: LevelsLike | None) -> Levels:
    """A vocabulary as an ordered ``dict[str, list[str]]``, checked for empty or repeated levels."""
    if levels is None:
        return {}
    pairs = list(levels.items()) if isinstance(levels, Mapping) else [tuple(p) for p in levels]
    out: Levels = {}
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"a level vocabulary entry must be [name, [levels]], got {pair!r}")
        name, values = str(pair[0]), [str(v) for v in pair[1]]
        if name in out:
            raise ValueError(f"confounder {name!r} appears twice in the level vocabulary")
        if not values or len(set(values)) != len(values):
            raise ValueError(f"confounder {name!r} needs distinct levels, got {values}")
        out[name] = values
    return out


def levels_to_json(levels: Levels) -> list[list[Any]]:
    """``[[name, [level, ...]], ...]``: order-preserving under ``json.dumps(sort_keys=True)``."""
    return [[name, list(values)] for name, values in levels.items()]


def build_levels(frame: pd.DataFrame, columns: Sequence[str]) -> Levels:
    """The vocabulary of the given columns: each column's distinct non-missing values, sorted."""
    _check_columns(frame, columns)
    out: Levels = {}
    for column in columns:
        names = {level_name(v) for v in frame[column].tolist()}
        present = sorted(n for n in names if n is not None)
        if not present:
            raise PathosaeError(
                f"confounder column {column!r} has no values in these rows. Fix: fill it in the "
                "manifest, or drop it from sae.confounder_columns."
            )
        out[column] = present
    return out


def encode_levels(frame: pd.DataFrame, levels: Levels) -> np.ndarray:
    """Conditions (rows × confounders, int64) of a table; -1 for missing or unseen levels."""
    _check_columns(frame, list(levels))
    codes = np.full((len(frame), len(levels)), UNKNOWN, dtype=np.int64)
    for j, (column, names) in enumerate(levels.items()):
        lookup = {name: i for i, name in enumerate(names)}
        values = [level_name(v) for v in frame[column].tolist()]
        codes[:, j] = [UNKNOWN if v is None else lookup.get(v, UNKNOWN) for v in values]
    return codes


def unseen_levels(frame: pd.DataFrame, levels: Levels) -> dict[str, list[str]]:
    """Per confounder, the levels in ``frame`` that the vocabulary lacks (missing values omitted)."""
    _check_columns(frame, list(levels))
    out: dict[str, list[str]] = {}
    for column, names in levels.items():
        known = set(names)
        seen = {level_name(v) for v in frame[column].tolist()}
        unseen = sorted(n for n in seen if n is not None and n not in known)
        if unseen:
            out[column] = unseen
    return out


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PathosaeError(
            f"the table has no confounder column(s) {missing} (it has {list(frame.columns)}). "
            "Fix: add them to the manifest or set sae.confounder_columns to columns it has."
        )


@dataclass
class Conditions:
    """Level codes of the training rows together with their vocabulary.

    ``codes[i, j]`` is the level of confounder ``j`` (the ``j``-th key of ``levels``) on row ``i``
    of the feature matrix, or -1. Rows follow the feature matrix's order (for a ``RowView``: the
    order of its sorted ``row_ids``).
    """

    codes: np.ndarray
    levels: Levels

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        if codes.ndim == 1:
            codes = codes[:, None]
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise PathosaeError(
                f"conditions must be an integer (rows × confounders) matrix, got shape "
                f"{codes.shape} and dtype {codes.dtype}. Fix: encode levels with Conditions.from_frame."
            )
        self.codes = codes.astype(np.int64, copy=False)
        self.levels = normalise_levels(self.levels)
        check_codes(torch.from_numpy(self.codes), self.levels)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, columns: Sequence[str], levels: LevelsLike | None = None
    ) -> Conditions:
        """Codes of ``frame``'s rows for ``columns``; the vocabulary is built from ``frame`` (the
        training rows) unless ``levels`` is given (then ``columns`` is ignored)."""
        vocab = normalise_levels(levels) if levels is not None else build_levels(frame, columns)
        return cls(encode_levels(frame, vocab), vocab)

    @classmethod
    def from_codes(cls, codes: np.ndarray | Tensor) -> Conditions:
        """Codes without names: confounder ``j`` is called ``c<j>`` and its levels ``"0"..``."""
        array = codes.cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
        array = array[:, None] if array.ndim == 1 else array
        if array.ndim != 2 or array.shape[0] == 0:
            raise PathosaeError(f"conditions must be a non-empty 2-D matrix, got shape {array.shape}.")
        sizes = np.maximum(array.max(axis=0), 0) + 1
        levels = {f"c{j}": [str(i) for i in range(int(n))] for j, n in enumerate(sizes)}
        return cls(array, levels)

    def __len__(self) -> int:
        return int(self.codes.shape[0])


def check_codes(codes: Tensor, levels: Levels) -> None:
    """Raise unless ``codes`` is (rows × len(levels)) with values in ``[-1, n_levels)``."""
    if codes.ndim != 2 or codes.shape[1] != len(levels):
        raise PathosaeError(
            f"conditions have shape {tuple(codes.shape)} but the model has {len(levels)} "
            f"confounder(s) {list(levels)}. Fix: one column per confounder, in that order."
        )
    for j, (name, names) in enumerate(levels.items()):
        column = codes[:, j]
        if column.numel() and (int(column.min()) < UNKNOWN or int(column.max()) >= len(names)):
            raise PathosaeError(
                f"confounder {name!r} has codes outside [-1, {len(names) - 1}]. Fix: encode the "
                "levels with the model's vocabulary (model.level_codes(frame))."
            )
