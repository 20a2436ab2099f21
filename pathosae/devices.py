"""The torch device a config key names: ``auto`` (CUDA when present, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``; a device that is not there is an error naming the key and the fix."""

from __future__ import annotations

import torch

from pathosae.errors import ConfigError


def resolve_device(name: str, key: str = "device") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"{key} {name!r} is not a device. Fix: use auto, cpu, cuda or cuda:N."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{key} is {name!r} but CUDA is not available here. Fix: use cpu (or auto)."
        )
    return device
