"""Downstream models on frozen tile embeddings: an MLP adapter and a gated-attention MIL head.

The adapter's hidden layer is where SAE-ception acts; the MIL head turns a slide's tiles into a
slide label. Training is deterministic for a seed on the CPU; splits are by patient.
"""

from __future__ import annotations

from pathosae._lazy import lazy_exports

_EXPORTS = {
    "AdapterMIL": "pathosae.downstream.model",
    "Bags": "pathosae.downstream.bags",
    "DownstreamConfig": "pathosae.downstream.config",
    "Splits": "pathosae.downstream.splits",
    "cohort_splits": "pathosae.downstream.splits",
    "predict_proba": "pathosae.downstream.train",
    "predict_proba_hidden": "pathosae.downstream.train",
    "site_leakage": "pathosae.downstream.metrics",
    "slide_hidden": "pathosae.downstream.train",
    "task_metrics": "pathosae.downstream.metrics",
    "tile_hidden": "pathosae.downstream.train",
    "train_downstream": "pathosae.downstream.train",
}

__all__ = [
    "AdapterMIL",
    "Bags",
    "DownstreamConfig",
    "Splits",
    "cohort_splits",
    "predict_proba",
    "predict_proba_hidden",
    "site_leakage",
    "slide_hidden",
    "task_metrics",
    "tile_hidden",
    "train_downstream",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
