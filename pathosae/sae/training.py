"""Tensor-first SAE training: ``train_sae(x, cfg) -> SAE`` on any float matrix or memmap.

Practice (see the project's ANCHORS): inputs scaled so E||x|| = sqrt(d) and the scale folded
back into the weights at the end; decoder bias at the geometric median; encoder initialised as
the decoder's transpose; unit-norm decoder atoms with the parallel gradient removed; AuxK on dead
latents; Adam with linear warm-up, constant, then linear decay to zero. The loop only sums the
dict of named losses the model returns.

Rows are drawn as shuffled minibatches from a fresh permutation each epoch; a memmap is read one
batch at a time (sorted row indices), so the matrix never has to fit in RAM.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from pathosae.config import SAEConfig
from pathosae.errors import PathosaeError
from pathosae.sae.base import SAE, TrainingOptions
from pathosae.sae.conditional import ConditionedTopKSAE
from pathosae.sae.levels import Conditions, LevelsLike
from pathosae.sae.registry import get_architecture

if TYPE_CHECKING:
    from pathosae.features import StoreRows


class RowView:
    """Selected rows of a matrix, memmap or feature store, read lazily (e.g. held-out tiles).

    Supports what training and evaluation need: ``shape``, ``ndim``, ``dtype`` and indexing by a
    sorted index array or a slice.
    """

    def __init__(self, base: np.ndarray | StoreRows, rows: np.ndarray) -> None:
        self.base = base
        self.row_ids = np.sort(np.asarray(rows, dtype=np.int64))  # sorted: sequential reads
        self.shape = (len(self.row_ids), *base.shape[1:])
        self.ndim = base.ndim
        self.dtype = base.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item: np.ndarray | slice) -> np.ndarray:
        return self.base[self.row_ids[item]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        del copy  # a fresh array is always returned
        out = np.asarray(self.base[self.row_ids])
        return out if dtype is None else out.astype(dtype)


ArrayLike = Tensor | np.ndarray | RowView  # an np.memmap is an np.ndarray


class RowSource:
    """Row access to a 2-D float matrix held as a tensor, an array, a memmap or a RowView."""

    def __init__(self, x: ArrayLike, name: str = "features") -> None:
        if x.ndim != 2:
            raise PathosaeError(
                f"{name} must be a 2-D (samples × dims) matrix, got shape {tuple(x.shape)}. "
                "Fix: reshape or stack the features into rows."
            )
        if x.shape[0] < 2 or x.shape[1] < 1:
            raise PathosaeError(f"{name} has shape {tuple(x.shape)}: need at least 2 rows.")
        kind = x.dtype.is_floating_point if isinstance(x, Tensor) else np.issubdtype(
            x.dtype, np.floating
        )
        if not kind:
            raise PathosaeError(
                f"{name} has dtype {x.dtype}; SAEs train on floating-point features. "
                "Fix: cast to float32."
            )
        self.x = x
        self.name = name

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    def rows(self, indices: np.ndarray) -> Tensor:
        """float32 rows at ``indices`` (read in sorted order, returned in the given order)."""
        if isinstance(self.x, Tensor):
            batch = self.x[torch.as_tensor(indices, device=self.x.device)].float()
        else:
            batch = torch.from_numpy(np.ascontiguousarray(self.x[indices], dtype=np.float32))
        if not bool(torch.isfinite(batch).all()):
            bad = indices[~torch.isfinite(batch).all(dim=1).cpu().numpy()]
            raise PathosaeError(
                f"{self.name} holds NaN or infinite values (rows {bad[:5].tolist()}...). "
                "Fix: drop or recompute those rows before training."
            )
        return batch

    def sample_indices(self, n: int, seed: int) -> np.ndarray:
        """Sorted indices of a seeded draw of ``n`` rows without replacement."""
        n = min(n, len(self))
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(len(self), size=n, replace=False))

    def sample(self, n: int, seed: int) -> Tensor:
        return self.rows(self.sample_indices(n, seed))


def batch_indices(n_rows: int, batch_size: int, n_steps: int, seed: int) -> Iterator[np.ndarray]:
    """Sorted row indices of each minibatch: a new permutation every epoch, batches that
    straddle an epoch boundary are completed from the next permutation."""
    rng = np.random.default_rng(seed)
    pending = np.empty(0, dtype=np.int64)
    for _ in range(n_steps):
        while pending.size < batch_size:
            pending = np.concatenate([pending, rng.permutation(n_rows)])
        batch, pending = pending[:batch_size], pending[batch_size:]
        yield np.sort(batch)


def n_steps_for(cfg: SAEConfig) -> int:
    return max(1, math.ceil(cfg.n_samples / cfg.batch_size))


def default_lr(d_sae: int) -> float:
    """2e-4 / sqrt(d_sae / 2^14), the scaling law reported for TopK SAEs."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def uses_bfloat16(precision: str, device: torch.device) -> bool:
    """bfloat16 autocast: asked for, or ``auto`` on a CUDA device that supports it."""
    if precision == "bfloat16":
        return True
    return (precision == "auto" and device.type == "cuda"
            and torch.cuda.is_bf16_supported())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PathosaeError(f"sae.device is {name!r} but CUDA is not available. Fix: use 'auto'.")
    return device


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 200, tol: float = 1e-7) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance."""
    points = points.double()
    median = points.mean(0)
    for _ in range(max_iter):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(1e-12)
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        shift = (updated - median).norm()
        median = updated
        if shift <= tol * median.norm().clamp_min(1.0):
            break
    return median.float()


def input_scale(sample: Tensor) -> float:
    """Factor s with E||s·x|| = sqrt(d)."""
    mean_norm = float(sample.norm(dim=1).mean())
    if mean_norm <= 0:
        raise PathosaeError("features are all zero; an SAE cannot be trained on them.")
    return math.sqrt(sample.shape[1]) / mean_norm


def build_model(
    d_in: int, cfg: SAEConfig, architecture: str | None = None, levels: LevelsLike | None = None
) -> SAE:
    """An untrained SAE of the configured architecture and width.

    ``levels``: the confounder level vocabulary of the confounder-aware architectures
    (``topk_offsets``, ``topk_reserved``, ``topk_offsets_reserved``), which cannot be built
    without it; others ignore it.
    """
    name = architecture or cfg.architecture
    cls = get_architecture(name)
    d_sae = cfg.d_sae or cfg.expansion * d_in
    if cls.needs_conditions and not levels:
        raise PathosaeError(
            f"SAE {name!r} is confounder-aware and needs the confounders' level vocabulary. Fix: "
            "train it with train_sae(..., conditions=Conditions.from_frame(rows, columns))."
        )
    reserved = {
        "k": cfg.k,
        "levels": levels,
        "reserved_per_level": cfg.reserved_per_level,
        "supervised_coefficient": cfg.supervised_coefficient,
        "independence_coefficient": cfg.independence_coefficient,
    }
    options_of: dict[str, dict[str, Any]] = {
        "topk": {"k": cfg.k},
        "batchtopk": {"k": cfg.k},
        "matryoshka": {"k": cfg.k, "prefixes": cfg.matryoshka_prefixes or None},
        "relu": {"l1_coefficient": cfg.l1_coefficient},
        "jumprelu": {
            "l0_coefficient": cfg.l0_coefficient,
            "bandwidth": cfg.jumprelu_bandwidth,
            "threshold_init": cfg.jumprelu_threshold,
        },
        "topk_offsets": {"k": cfg.k, "levels": levels},
        "topk_reserved": reserved,
        "topk_offsets_reserved": reserved,
    }
    options = options_of.get(name, {})
    if "k" in options and options["k"] > d_sae:
        raise PathosaeError(f"sae.k={cfg.k} exceeds d_sae={d_sae}. Fix: lower k or widen the SAE.")
    try:
        return cls(d_in=d_in, d_sae=d_sae, **options)
    except ValueError as exc:  # constructor checks (k against the free latents, levels)
        raise PathosaeError(f"cannot build SAE {name!r}: {exc}") from exc


def lr_lambda(n_steps: int, warmup_fraction: float, decay_fraction: float) -> Callable[[int], float]:
    warmup = max(1, round(n_steps * warmup_fraction)) if warmup_fraction > 0 else 0
    decay = round(n_steps * decay_fraction)
    decay_start = n_steps - decay

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if decay and step >= decay_start:
            return max(0.0, (n_steps - step) / decay)
        return 1.0

    return factor


def make_optimizer(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # fused Adam missing for this device/build
        return torch.optim.Adam(params, lr=lr)


class _RowConditions:
    """Level codes (and labels) of the training rows, sliced with each batch's indices."""

    def __init__(
        self, conditions: Conditions | np.ndarray | Tensor, labels: np.ndarray | Tensor | None,
        n_rows: int,
    ) -> None:
        bundle = conditions if isinstance(conditions, Conditions) else Conditions.from_codes(conditions)
        self.levels = bundle.levels
        self.codes = torch.from_numpy(bundle.codes)
        self.labels = None if labels is None else torch.as_tensor(labels).reshape(-1).long().cpu()
        for name, n in (("conditions", len(self.codes)),
                        ("labels", n_rows if self.labels is None else len(self.labels))):
            if n != n_rows:
                raise PathosaeError(
                    f"{name} have {n} rows for {n_rows} feature rows. Fix: pass one entry per "
                    "training row, in the feature matrix's order."
                )

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, Tensor | None]:
        rows = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        labels = None if self.labels is None else self.labels[rows].to(device)
        return {"conditions": self.codes[rows].to(device), "labels": labels}


def _row_conditions(
    cls: type[SAE], conditions: Conditions | np.ndarray | Tensor | None,
    labels: np.ndarray | Tensor | None, n_rows: int,
) -> _RowConditions | None:
    if not cls.needs_conditions:
        return None  # plain SAEs ignore conditions, so a caller may always pass them
    if conditions is None:
        raise PathosaeError(
            f"SAE {cls.architecture!r} is confounder-aware: train_sae needs conditions= (level "
            "codes per training row). Fix: pass Conditions.from_frame(train_rows, columns)."
        )
    return _RowConditions(conditions, labels, n_rows)


def _initialise(
    sae: SAE, source: RowSource, cfg: SAEConfig, seed: int, row_conditions: _RowConditions | None
) -> float:
    """Input scale, condition-specific starting values, decoder bias at the geometric median."""
    init_rows = source.sample_indices(cfg.init_samples, seed)
    init = source.rows(init_rows)
    scale = input_scale(init) if cfg.scale_inputs else 1.0
    sample = init * scale
    if isinstance(sae, ConditionedTopKSAE) and row_conditions is not None:
        codes = row_conditions.codes  # the model is still on the CPU here, and so are the codes
        sample = sae.prepare(sample.cpu(), codes[torch.from_numpy(init_rows)], codes)
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(sample))
    return scale


def _losses(
    sae: SAE, batch: Tensor, indices: np.ndarray, row_conditions: _RowConditions | None
) -> dict[str, Tensor]:
    if isinstance(sae, ConditionedTopKSAE) and row_conditions is not None:
        extra = row_conditions.batch(indices, batch.device)
        return sae.losses(batch, conditions=extra["conditions"], labels=extra["labels"])
    return sae.losses(batch)


def train_sae(
    x: ArrayLike,
    cfg: SAEConfig | None = None,
    *,
    architecture: str | None = None,
    seed: int | None = None,
    batches: Iterable[np.ndarray] | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    conditions: Conditions | np.ndarray | Tensor | None = None,
    labels: np.ndarray | Tensor | None = None,
) -> SAE:
    """Train an SAE on the rows of ``x`` (tensor, array or memmap) and return it in eval mode.

    ``batches`` overrides the row order (sorted index arrays, one per step), e.g. to feed several
    implementations the same minibatches; otherwise ``batch_indices`` with the config's seed.
    The returned model takes unscaled inputs; ``sae.training_log`` records what happened.

    Confounder-aware architectures (``needs_conditions``) also need ``conditions``: a
    ``Conditions`` (level codes + vocabulary, e.g. ``Conditions.from_frame(train_rows, columns)``)
    or a bare int (rows × confounders) code matrix (levels then named by number), -1 = unknown,
    aligned with ``x``'s rows; ``labels`` (int per row, optional) makes their independence term
    within label. Each batch slices them with the batch's row indices. Other SAEs ignore both.
    """
    cfg = cfg or SAEConfig()
    seed = cfg.seed if seed is None else seed
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    source = RowSource(x)
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    row_conditions = _row_conditions(
        get_architecture(architecture or cfg.architecture), conditions, labels, len(source)
    )
    levels = row_conditions.levels if row_conditions is not None else None
    sae = build_model(source.dim, cfg, architecture, levels=levels)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    sae.train_opts = TrainingOptions(
        dead_window=cfg.dead_window,
        aux_k=cfg.aux_k,
        aux_coefficient=cfg.aux_coefficient,
        redundancy_coefficient=cfg.redundancy_coefficient,
    )
    scale = _initialise(sae, source, cfg, seed, row_conditions)
    sae.to(device).train()

    bf16 = uses_bfloat16(cfg.precision, device)
    n_steps = n_steps_for(cfg)
    optimizer = make_optimizer(sae.parameters(), cfg.lr or default_lr(sae.d_sae))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(n_steps, cfg.warmup_fraction, cfg.decay_fraction)
    )
    order = batches if batches is not None else batch_indices(
        len(source), cfg.batch_size, n_steps, seed
    )
    started = time.perf_counter()
    samples = steps = 0
    last: dict[str, float] = {}
    for indices in order:
        batch = source.rows(indices).to(device, non_blocking=True).mul_(scale)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            losses = _losses(sae, batch, indices, row_conditions)
        losses = {name: value.float() for name, value in losses.items()}
        loss = sum(losses.values())
        assert isinstance(loss, Tensor), "an SAE returns at least one loss"
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_decoder_grad()
        optimizer.step()
        schedule.step()
        sae.normalize_decoder()
        samples += batch.shape[0]
        steps += 1
        if progress is not None or steps == n_steps:
            last = {name: float(value.detach()) for name, value in losses.items()}
            if progress is not None:
                progress(steps, n_steps, last)
    elapsed = time.perf_counter() - started
    sae.fold_input_scale(scale)
    sae.eval()
    sae.training_log = {
        "architecture": sae.architecture,
        "steps": steps,
        "samples": samples,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(samples / max(elapsed, 1e-9), 1),
        "input_scale": scale,
        "lr": cfg.lr or default_lr(sae.d_sae),
        "final_losses": last,
        "dead_fraction_train": float(sae.dead_mask().float().mean()),
        "seed": seed,
        "device": str(device),
        "precision": "bfloat16" if bf16 else "float32",
        "confounders": list(levels or {}),
        "within_label": bool(row_conditions is not None and row_conditions.labels is not None),
    }
    return sae
