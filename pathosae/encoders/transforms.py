"""The published input transform of an encoder, applied to whole batches of uint8 tiles.

Tiles travel from the reader processes as uint8 (4x less to copy than float); resizing, cropping
and normalising happen here on the inference device, batch by batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from pathosae.encoders.registry import EncoderSpec


class TileTransform(nn.Module):
    """uint8 tiles (B, H, W, 3) or (B, 3, H, W) -> normalised float (B, 3, input_px, input_px).

    Square tiles are resized to ``resize_px`` (antialiased, like PIL) and centre-cropped to
    ``input_px``; nothing is resampled when the tile already has the right size.
    """

    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.resize_px = spec.resize_px
        self.crop_px = spec.input_px
        self.interpolation = spec.interpolation
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = to_nchw(tiles).float()
        if x.shape[-2:] != (self.resize_px, self.resize_px):
            x = F.interpolate(
                x, size=(self.resize_px, self.resize_px), mode=self.interpolation,
                align_corners=False, antialias=True,
            )
            # PIL clips to 0..255 after resampling; bicubic overshoots otherwise.
            x = x.round().clamp_(0.0, 255.0)
        x = center_crop(x, self.crop_px)
        return (x - self.mean) / self.std


def to_nchw(tiles: torch.Tensor) -> torch.Tensor:
    """Accept channels-last (B, H, W, 3) batches as the readers produce them."""
    if tiles.ndim != 4:
        raise ValueError(f"expected a 4-d batch of tiles, got shape {tuple(tiles.shape)}")
    if tiles.shape[-1] == 3 and tiles.shape[1] != 3:
        return tiles.permute(0, 3, 1, 2)
    return tiles


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's centre crop (offsets rounded the same way) for tensors at least ``size``."""
    height, width = x.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot crop {size} px from a {height}x{width} image")
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return x[..., top : top + size, left : left + size]
