"""Slides predicted over every one of their tiles, read chunk by chunk from the feature store.

Training and the effect table use capped bags (``max_tiles_per_slide`` tiles per slide), so that
every edit is compared on the same rows in bounded memory. This module says whether the cap
changed the answer: the same model on all the tiles of the test slides, streamed through the
online-softmax attention pooling (:class:`pathosae.downstream.train.StreamedPooling`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pathosae.downstream.bags import Bags
from pathosae.downstream.metrics import task_metrics
from pathosae.downstream.model import AdapterMIL
from pathosae.downstream.train import predict_proba, predict_proba_streamed
from pathosae.features import FeatureStore
from pathosae.progress import bar

CHUNK_ROWS = 8192


def predict_store_slides(model: AdapterMIL, store: FeatureStore, slide_ids: np.ndarray,
                         chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Class probabilities ``(S, C)`` of the given slides from all their stored tiles."""
    slides = ((torch.from_numpy(chunk) for chunk in store.iter_chunks(str(s), chunk_rows))
              for s in bar(slide_ids, "all tiles of the test slides", unit="slide"))
    return predict_proba_streamed(model, slides)


def capped_vs_all_tiles(model: AdapterMIL, store: FeatureStore,
                        tests: dict[str, Bags]) -> dict[str, Any]:
    """Per test split: balanced accuracy and AUROC on the capped bags and on all the tiles, the
    share of slides whose predicted class agrees, and the tiles each used."""
    out: dict[str, Any] = {}
    counts = dict(zip(store.slide_ids, np.diff(store.offsets()), strict=True))
    for name, bags in tests.items():
        capped = predict_proba(model, bags)
        every = predict_store_slides(model, store, bags.slide_ids)
        y = bags.y.numpy()
        on_capped, on_all = task_metrics(y, capped, bags.site), task_metrics(y, every, bags.site)
        out[name] = {
            "slides": int(bags.n_slides),
            "tiles_capped": int(bags.x.shape[0]),
            "tiles_all": int(sum(counts[str(s)] for s in bags.slide_ids)),
            "bacc_capped": on_capped["bacc"], "bacc_all_tiles": on_all["bacc"],
            "auroc_capped": on_capped["auroc"], "auroc_all_tiles": on_all["auroc"],
            "agreement": float(np.mean(capped.argmax(1) == every.argmax(1))),
        }
    return out
