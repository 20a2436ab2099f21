"""Training and prediction of the downstream model; deterministic for a seed on the CPU."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from pathosae.devices import resolve_device
from pathosae.downstream.bags import Bags
from pathosae.downstream.config import DownstreamConfig
from pathosae.downstream.model import AdapterMIL

AuxLoss = Callable[[Tensor, Tensor], Tensor]
"""``aux(h_tiles, target_tiles) -> scalar`` on the valid tiles of a batch."""


def cosine_aux(h: Tensor, target: Tensor) -> Tensor:
    return (1 - F.cosine_similarity(h, target, dim=-1)).mean()


def mse_aux(h: Tensor, target: Tensor) -> Tensor:
    return (h - target).pow(2).sum(-1).mean() / h.shape[-1]


def train_downstream(
    bags: Bags,
    cfg: DownstreamConfig,
    seed: int,
    init: AdapterMIL | None = None,
    target: Tensor | None = None,
    aux_weight: float = 0.0,
    aux_loss: AuxLoss = cosine_aux,
) -> AdapterMIL:
    """Train (or, from ``init``, fine-tune a copy of) the model on ``bags``.

    ``target`` (one row per tile of ``bags``) adds ``aux_weight * aux_loss(h, target)`` on the
    adapter layer; that is where SAE-ception steers the representation.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if init is None:
        model = AdapterMIL(
            bags.dim, len(bags.classes), cfg.hidden_dim, cfg.attention_dim, cfg.dropout
        )
        model.fit_scaler(bags.x)
    else:
        model = copy.deepcopy(init)
    device = resolve_device(cfg.device, "downstream.device")
    # Each batch pads its own slides: a padded copy of every training tile is never held.
    width = bags.largest_bag()
    targets = _targets_like(bags, target) if target is not None else None
    y = bags.y.to(device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = _class_weights(bags.y, len(bags.classes)).to(device)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(bags.n_slides, generator=generator)
        for start in range(0, bags.n_slides, cfg.batch_slides):
            idx = order[start : start + cfg.batch_slides]
            x_batch, mask = (t.to(device) for t in bags.padded(idx, width))
            logits, h = model(x_batch, mask)
            loss = F.cross_entropy(logits, y[idx.to(device)], weight=weights)
            if targets is not None and aux_weight > 0:
                t_batch = targets.padded(idx, width)[0].to(device)
                loss = loss + aux_weight * aux_loss(h[mask], t_batch[mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model.cpu()


def _class_weights(y: Tensor, n_classes: int) -> Tensor:
    counts = torch.bincount(y, minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


def _targets_like(bags: Bags, values: Tensor) -> Bags:
    """The bags with the per-tile targets in place of the embeddings (padded batch by batch)."""
    if values.shape[0] != bags.x.shape[0]:
        raise ValueError(f"target has {values.shape[0]} rows, bags have {bags.x.shape[0]} tiles")
    return bags.with_x(values)


PREDICT_SLIDES = 32
"""Slides padded and predicted at once: 32 × 256 tiles × 768 floats is 25 MB, and the adapter's
standardised copy as much again (256 slides made a transient 0.3 GB at 600 slides)."""


@torch.no_grad()
def predict_proba(model: AdapterMIL, bags: Bags, chunk: int = PREDICT_SLIDES) -> np.ndarray:
    """Slide class probabilities ``(S, C)`` from tile embeddings, ``chunk`` slides at a time."""
    return _predict(model, bags, chunk, lambda x, mask: model(x, mask)[0])


@torch.no_grad()
def predict_proba_hidden(model: AdapterMIL, hidden: Bags, chunk: int = PREDICT_SLIDES) -> np.ndarray:
    """Slide class probabilities ``(S, C)`` from adapter-layer activations: ``hidden.x`` holds
    ``h`` per tile (e.g. edited), and only the attention-MIL head runs on it."""
    return _predict(model, hidden, chunk, lambda h, mask: model.classifier(model.pool(h, mask)[0]))


def _predict(
    model: AdapterMIL, bags: Bags, chunk: int, logits_of: Callable[[Tensor, Tensor], Tensor]
) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, bags.n_slides, chunk):
        x_pad, mask = bags.padded(torch.arange(start, min(start + chunk, bags.n_slides)))
        out.append(torch.softmax(logits_of(x_pad, mask), dim=1))
    return torch.cat(out).numpy() if out else np.zeros((0, len(bags.classes)))


class StreamedPooling:
    """Gated-attention pooling of one slide whose tiles arrive in chunks, as an online softmax:
    a running maximum of the attention logits, the weight sum and the weighted sum of ``h``
    rescaled whenever the maximum grows. Memory is one chunk, whatever the slide's size, and the
    result equals pooling all tiles at once (up to float rounding)."""

    def __init__(self, model: AdapterMIL) -> None:
        self.model = model
        self.top = torch.tensor(float("-inf"))
        self.weight_sum = torch.tensor(0.0)
        self.weighted: Tensor | None = None

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        """Add a chunk of tile embeddings ``(n, D)``."""
        if not len(x):
            return
        h = self.model.hidden(x)
        scores = self.model.attention_scores(h)
        top = torch.maximum(self.top, scores.max())
        rescale = torch.exp(self.top - top)
        weights = torch.exp(scores - top)
        self.weight_sum = self.weight_sum * rescale + weights.sum()
        chunk_sum = weights @ h
        self.weighted = chunk_sum if self.weighted is None else self.weighted * rescale + chunk_sum
        self.top = top

    @torch.no_grad()
    def proba(self) -> Tensor:
        """Class probabilities ``(C,)`` of the slide from every tile added."""
        if self.weighted is None:
            raise ValueError("no tiles were added to the slide")
        logits = self.model.classifier(self.weighted / self.weight_sum)
        return torch.softmax(logits, dim=0)


def predict_proba_streamed(
    model: AdapterMIL, slides: Iterable[Iterable[Tensor]],
) -> np.ndarray:
    """Slide probabilities ``(S, C)`` with every slide's tiles read chunk by chunk (e.g. all the
    tiles of each slide from a feature store, edited per chunk): memory is one chunk, not a
    padded ``(S, T, D)`` batch."""
    model.eval()
    rows = []
    for chunks in slides:
        pooling = StreamedPooling(model)
        for x in chunks:
            pooling.add(x)
        rows.append(pooling.proba())
    if not rows:
        return np.zeros((0, model.classifier.out_features))
    return torch.stack(rows).numpy()


@torch.no_grad()
def tile_hidden(model: AdapterMIL, x: Tensor, chunk: int = 8192) -> Tensor:
    """Adapter-layer activations of tile embeddings ``(N, H)``, ``chunk`` tiles at a time (the
    standardised copy of a chunk is its size again: 8,192 × 768 floats is 25 MB)."""
    model.eval()
    return torch.cat([model.hidden(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


@torch.no_grad()
def slide_hidden(model: AdapterMIL, bags: Bags) -> Tensor:
    """Per-slide mean of the adapter-layer activations ``(S, H)``."""
    return bags.slide_means(tile_hidden(model, bags.x))
