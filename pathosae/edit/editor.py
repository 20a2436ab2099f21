"""Fit/transform wrapper that turns an :class:`EditSpec` into an embedding transform."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import numpy as np
import torch
from torch import Tensor

from pathosae.edit import ops as edit_ops
from pathosae.edit.spec import (
    CODE_OPS,
    Ablate,
    Clamp,
    EditSpec,
    Leace,
    Operation,
    ProjectCode,
    ProjectOut,
    RandomUnits,
    Scale,
)
from pathosae.errors import StageError

Transform = Callable[[Tensor], Tensor]


class Editor:
    """``Editor(spec, sae, directions).fit(x_train, metadata).transform(x)``.

    Fitting resolves what depends on data, in order along the chain: random-unit draws (among
    units that fire on the training rows) and LEACE erasers (fitted on the training embeddings as
    the earlier operations left them).
    """

    def __init__(
        self,
        spec: EditSpec,
        sae: edit_ops.SAELike | None = None,
        directions: Mapping[str, np.ndarray | Tensor] | None = None,
    ) -> None:
        if spec.needs_sae and sae is None:
            raise StageError(
                f"edit {spec.name!r} has SAE-code operations but no SAE was given. "
                "Fix: train one (`pathosae sae --run RUN`) or use embedding-space operations."
            )
        self.spec = spec
        self.sae = sae
        self.directions = dict(directions or {})
        self.steps_: list[Transform] | None = None
        self.units_: list[int] = []

    def fit(self, x: Tensor, metadata: Mapping[str, np.ndarray] | None = None) -> Editor:
        self.fit_transform(x, metadata)
        return self

    def transform(self, x: Tensor) -> Tensor:
        if self.steps_ is None:
            raise RuntimeError("call fit() before transform()")
        for step in self.steps_:
            x = step(x)
        return x

    def fit_transform(self, x: Tensor, metadata: Mapping[str, np.ndarray] | None = None) -> Tensor:
        """Fit, and return ``x`` edited (each step is fitted on the previous step's output, so
        the training rows come out of the fit without a second pass)."""
        steps: list[Transform] = []
        current = x
        for group in _groups(self.spec.ops):
            step = self._fit_group(group, current, metadata or {})
            steps.append(step)
            current = step(current)
        self.steps_ = steps
        return current

    # ---- fitting one step --------------------------------------------------------------------
    def _fit_group(self, group: list[Operation], x: Tensor, metadata: Mapping[str, np.ndarray]) -> Transform:
        if group[0].op in CODE_OPS:
            code_ops = [self._code_op(o, x) for o in group]
            return partial(edit_ops.apply_code_edit, sae=self._code_sae(), ops=code_ops)
        (op,) = group
        if isinstance(op, ProjectOut):
            return partial(edit_ops.project_out, direction=self._direction(op, x.shape[1]))
        if isinstance(op, Leace):
            return _fit_leace(x, op.concept, metadata)
        raise AssertionError(f"unhandled operation {op.op}")

    def _code_op(self, op: Operation, x: Tensor) -> edit_ops.CodeOp:
        if isinstance(op, Ablate):
            self.units_ += op.units
            return partial(edit_ops.ablate_units, units=op.units)
        if isinstance(op, Scale):
            self.units_ += op.units
            return partial(edit_ops.scale_units, units=op.units, factor=op.factor)
        if isinstance(op, Clamp):
            self.units_ += op.units
            return partial(edit_ops.clamp_units, units=op.units, value=op.value)
        if isinstance(op, RandomUnits):
            units = draw_random_units(self._code_sae(), x, op.count, op.seed)
            self.units_ += units
            return partial(edit_ops.ablate_units, units=units)
        if isinstance(op, ProjectCode):
            return partial(edit_ops.project_code, direction=self._direction(op, self._d_sae(x)))
        raise AssertionError(f"unhandled operation {op.op}")

    def _code_sae(self) -> edit_ops.SAELike:
        """The SAE of a code operation: present, since __init__ refuses code ops without one."""
        assert self.sae is not None
        return self.sae

    def _d_sae(self, x: Tensor) -> int:
        return int(self._code_sae().encode(x[:1]).shape[1])

    def _direction(self, op: ProjectCode | ProjectOut, dim: int) -> Tensor:
        if op.vector is not None:
            vec = torch.tensor(op.vector, dtype=torch.float32)
        elif op.name in self.directions:
            vec = torch.as_tensor(np.asarray(self.directions[op.name]), dtype=torch.float32)
        else:
            raise StageError(
                f"edit {self.spec.name!r} names direction {op.name!r}, which is not among "
                f"{sorted(self.directions)}. Fix: run `pathosae confounders` or fix the name."
            )
        if vec.numel() % dim:
            raise StageError(
                f"direction {op.name or 'vector'} of edit {self.spec.name!r} has {vec.numel()} "
                f"values; the {op.op} space has {dim} dims. Fix: use a direction of that space."
            )
        return vec.reshape(-1, dim)


def _groups(ops: list[Operation]) -> list[list[Operation]]:
    """Consecutive code operations form one group; every embedding operation its own."""
    groups: list[list[Operation]] = []
    for op in ops:
        if op.op in CODE_OPS and groups and groups[-1][0].op in CODE_OPS:
            groups[-1].append(op)
        else:
            groups.append([op])
    return groups


@torch.no_grad()
def draw_random_units(sae: edit_ops.SAELike, x: Tensor, count: int, seed: int) -> list[int]:
    """``count`` units drawn without replacement among those that fire on some row of ``x``."""
    step = edit_ops.EDIT_CHUNK_ROWS  # one chunk's codes at a time
    per_chunk = [(sae.encode(x[start : start + step]) > 0).any(0)
                 for start in range(0, x.shape[0], step)]
    fired = torch.stack(per_chunk).any(0).nonzero().flatten().numpy()
    if len(fired) < count:
        raise StageError(f"cannot draw {count} random units: only {len(fired)} fire on the data.")
    rng = np.random.default_rng(seed)
    return sorted(int(u) for u in rng.choice(fired, size=count, replace=False))


def _fit_leace(x: Tensor, concept: str, metadata: Mapping[str, np.ndarray]) -> Transform:
    from pathosae.confounders.directions import apply_eraser, fit_leace

    if concept not in metadata:
        raise StageError(
            f"LEACE needs the column {concept!r} for every training row; have {sorted(metadata)}. "
            "Fix: name a metadata column of the cohort."
        )
    eraser = fit_leace(x.numpy(), np.asarray(metadata[concept]))
    return lambda v: torch.from_numpy(apply_eraser(eraser, v.numpy()))
