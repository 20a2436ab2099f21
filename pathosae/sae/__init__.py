"""Sparse autoencoders on stored features: architectures, training, metrics and controls.

Tensor-first: ``train_sae(x, cfg)`` takes any float tensor, array or memmap; ``load_sae(dir)``
works without a run directory.
"""

from pathosae.sae.base import SAE
from pathosae.sae.io import load_sae, save_sae
from pathosae.sae.levels import Conditions
from pathosae.sae.metrics import evaluate_sae, fvu
from pathosae.sae.registry import architectures, build_sae, get_architecture
from pathosae.sae.training import train_sae

__all__ = [
    "SAE",
    "Conditions",
    "architectures",
    "build_sae",
    "evaluate_sae",
    "fvu",
    "get_architecture",
    "load_sae",
    "save_sae",
    "train_sae",
]
