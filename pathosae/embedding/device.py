"""Choosing the device, precision and memory layout for inference.

Shared by the embedding stage and every other place that embeds tiles (the ground-truth renders).

Measured on the 2-core development CPU (AMD EPYC with avx512_bf16; EfficientNet-Lite0, 224 px,
batch 32): channels_last about 18 -> 34 tiles/s; for a ViT it changes nothing useful on CPU (only
the patch projection is a convolution). bf16 autocast was about 2x faster than fp32 on that CPU,
but is reported about 5x slower than fp32 on CPUs without them, and it changes the numbers: ``auto`` therefore
runs fp32 on every CPU (same features on every machine); ``precision: bf16`` is available on
request. On CUDA, ``auto`` uses the model's published precision and channels_last.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pathosae import devices
from pathosae.config import EmbeddingConfig
from pathosae.encoders import Encoder
from pathosae.encoders.registry import EncoderSpec

PrecisionName = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferencePlan:
    device: torch.device
    precision: PrecisionName
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])


def resolve_device(name: str) -> torch.device:
    return devices.resolve_device(name, "embedding.device")


def plan_inference(cfg: EmbeddingConfig, spec: EncoderSpec) -> InferencePlan:
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, spec, device)
    if cfg.channels_last == "auto":
        channels_last = device.type == "cuda" or spec.family == "cnn"
    else:
        channels_last = bool(cfg.channels_last)
    return InferencePlan(device, precision, channels_last)


def resolve_precision(
    requested: Literal["auto"] | PrecisionName, spec: EncoderSpec, device: torch.device
) -> PrecisionName:
    """``auto``: the model's published precision on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "fp32"
    if spec.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return spec.precision


def prepare_model(encoder: Encoder, plan: InferencePlan) -> Encoder:
    model = encoder.to(plan.device).eval()
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def forward_batch(model: Encoder, tiles: torch.Tensor, plan: InferencePlan) -> np.ndarray:
    """uint8 tiles -> float32 features on the host."""
    with torch.inference_mode():
        x = model.preprocess(tiles.to(plan.device, non_blocking=True))
        if plan.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with plan.autocast():
            y = model(x)
        return y.float().cpu().numpy()
