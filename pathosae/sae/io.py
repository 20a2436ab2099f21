"""Saving and loading SAEs: ``sae.safetensors`` + ``cfg.json`` (+ ``metrics.json``), no run needed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pathosae.errors import PathosaeError
from pathosae.io import atomic_path, read_json, write_json_atomic
from pathosae.sae.base import SAE
from pathosae.sae.registry import build_sae
from pathosae.schema import SAE_CONFIG, SAE_WEIGHTS

WEIGHTS = SAE_WEIGHTS
CONFIG = SAE_CONFIG
METRICS = "metrics.json"
FORMAT_VERSION = 1


def sae_config(sae: SAE, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What cfg.json holds: architecture, constructor arguments and provenance."""
    return {
        "format_version": FORMAT_VERSION,
        "architecture": sae.architecture,
        "hparams": sae.hparams(),
        "inputs_scaled": False,  # any input scale used in training is folded into the weights
        **(extra or {}),
    }


def save_sae(
    sae: SAE,
    directory: str | os.PathLike[str],
    metrics: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write weights, config and (optionally) metrics; each file lands atomically.

    cfg.json is written last, so a folder with cfg.json has complete weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in sae.state_dict().items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"architecture": sae.architecture})
    if metrics is not None:
        write_json_atomic(directory / METRICS, metrics)
    write_json_atomic(directory / CONFIG, sae_config(sae, extra_config))
    return directory


def load_sae(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> SAE:
    """Rebuild a saved SAE from its folder (eval mode), checking every tensor's shape."""
    directory = Path(directory)
    cfg_path, weights_path = directory / CONFIG, directory / WEIGHTS
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise PathosaeError(
                f"{path} is missing. Fix: point load_sae at a folder written by pathosae "
                "(sae.safetensors + cfg.json), e.g. RUN/sae/<name>."
            )
    cfg = read_json(cfg_path)
    if "architecture" not in cfg or "hparams" not in cfg:
        raise PathosaeError(f"{cfg_path} lacks 'architecture'/'hparams'. Fix: re-save the SAE.")
    sae = build_sae(cfg["architecture"], **cfg["hparams"])
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types
        raise PathosaeError(f"{weights_path} is unreadable ({exc}). Fix: retrain or re-save.") from exc
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise PathosaeError(
            f"{weights_path} does not match a {cfg['architecture']} SAE: missing {missing}, "
            f"unexpected {unexpected}. Fix: keep cfg.json and the weights from the same save."
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise PathosaeError(
                f"{weights_path}: tensor {name!r} has shape {tuple(tensor.shape)}, cfg.json implies "
                f"{tuple(expected[name].shape)}. Fix: keep cfg.json and the weights together."
            )
    sae.load_state_dict(tensors)
    return sae.to(device).eval()
