"""Building an encoder from the registry and loading its weights from a local file.

Every encoder, the packaged default included, goes through :func:`load_weights_file` and
:func:`check_state_dict`: a missing file, a missing tensor or a tensor of the wrong shape is an
error naming the encoder, the file and the first tensor at fault. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from pathosae.encoders.keymaps import KeyMapError, apply_key_map
from pathosae.encoders.pooling import pool_features, pooled_dim
from pathosae.encoders.registry import EncoderSpec, get_spec
from pathosae.encoders.transforms import TileTransform
from pathosae.errors import ConfigError
from pathosae.io import sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# Checkpoints often wrap the state dict in one of these keys.
_CONTAINER_KEYS = ("state_dict", "model", "module", "teacher")


class WeightsError(ConfigError):
    """A weights file is missing, unreadable or does not fit the encoder's architecture."""

    def __init__(self, encoder: str, path: str | os.PathLike[str] | None, reason: str, fix: str):
        self.encoder = encoder
        self.path = str(path) if path is not None else None
        where = f" weights file {path}" if path is not None else ""
        super().__init__(f"encoder {encoder!r}{where}: {reason}. Fix: {fix}")


class Backbone(Protocol):
    """What ``Encoder`` uses of a timm model (``timm.create_model`` is typed as a bare nn.Module)."""

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...


def _backbone(model: nn.Module) -> Backbone:
    return cast(Backbone, model)


class Encoder(nn.Module):
    """A built encoder: ``preprocess`` (uint8 tiles -> model input) then ``forward`` (-> pooled)."""

    def __init__(
        self, spec: EncoderSpec, model: nn.Module, weights_sha256: str, random_weights: bool
    ) -> None:
        super().__init__()
        self.spec = spec
        self.model = model
        self.preprocess = TileTransform(spec)
        self.weights_sha256 = weights_sha256
        self.random_weights = random_weights
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.dim = pooled_dim(int(_backbone(model).num_features), spec.pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = _backbone(self.model).forward_features(x)
        return pool_features(tokens, self.spec.pooling, self.num_prefix_tokens)

    def embed(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 tiles (B, H, W, 3) -> pooled features (B, dim)."""
        return self(self.preprocess(tiles))

    def describe(self) -> dict[str, Any]:
        """What a feature file records about the encoder that made it."""
        return describe_encoder(self.spec, self.dim, self.weights_sha256, self.random_weights)


def describe_encoder(
    spec: EncoderSpec, dim: int, weights_sha256: str, random_weights: bool
) -> dict[str, Any]:
    return {
        "encoder": spec.name,
        "pooling": spec.pooling,
        "dim": dim,
        "transform": spec.transform_dict(),
        "weights_sha256": weights_sha256,
        "random_weights": random_weights,
    }


def weights_digest(
    spec: EncoderSpec, weights: str | os.PathLike[str] | None, random_weights: bool, seed: int
) -> str:
    """The identity of an encoder's weights: the file's SHA-256, or the random init's seed."""
    if random_weights:
        return f"random-init:seed={seed}"
    path = resolve_weights_path(spec, weights)
    if not path.is_file():
        raise WeightsError(spec.name, path, "the file does not exist",
                           "check embedding.weights (a local .safetensors, .bin or .pth file)")
    return sha256_file(path)


def build_encoder(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    random_weights: bool = False,
    seed: int = 0,
    known_sha256: str | None = None,
    **arch_overrides: Any,
) -> Encoder:
    """Build encoder ``name`` with weights from ``weights`` (or its packaged file).

    ``random_weights=True`` gives the same architecture with timm's initialisation under a fixed
    seed: a control, because sparse autoencoders find "interpretable" units in random networks
    too. ``arch_overrides`` change timm kwargs (tests use them for small variants);
    ``known_sha256`` spares hashing a large weights file twice.
    """
    spec = get_spec(name)
    if random_weights:
        model = create_model(spec, seed=seed, **arch_overrides)
        digest = weights_digest(spec, None, True, seed)
    else:
        path = resolve_weights_path(spec, weights)
        state = load_weights_file(spec.name, path)
        overrides = {**checkpoint_grid(spec, state), **arch_overrides}
        model = create_model(spec, seed=seed, **overrides)
        state = check_state_dict(spec, model.state_dict(), state, path)
        model.load_state_dict(state, strict=True)
        digest = known_sha256 or sha256_file(path)
    model.eval()
    encoder = Encoder(spec, model, digest, random_weights)
    return encoder.eval()


def checkpoint_grid(spec: EncoderSpec, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The image size a Hugging Face DINOv2 checkpoint's position table was made for.

    Such checkpoints may carry a position table for 518 px (DINOv2's default) or 224 px; the
    model is built with the checkpoint's table and, like the original, interpolates it at run
    time for 224 px tiles (``dynamic_img_size``).
    """
    if spec.key_map != "hf_dinov2":
        return {}
    table = next((v for k, v in state.items() if k.endswith("embeddings.position_embeddings")),
                 None)
    if table is None or table.ndim != 3:
        return {}
    grid = math.isqrt(table.shape[1] - 1)
    if grid * grid != table.shape[1] - 1:
        return {}
    return {"img_size": grid * int(spec.timm_kwargs.get("patch_size", 16))}


def create_model(spec: EncoderSpec, seed: int = 0, **arch_overrides: Any) -> nn.Module:
    """The timm architecture of ``spec``, initialised under ``seed`` (no weights loaded)."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, **spec.timm_kwargs}
    kwargs.update({k: _resolve_object(v) for k, v in spec.timm_layers.items()})
    kwargs.update(arch_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(spec.timm_name, pretrained=False, **kwargs)


def resolve_weights_path(spec: EncoderSpec, weights: str | os.PathLike[str] | None) -> Path:
    if weights is None:
        if spec.packaged_weights is None:
            raise WeightsError(
                spec.name, None, "no weights file is configured and none ships with pathosae",
                f"download the weights from {spec.model_card} and set embedding.weights to the "
                "local file (or set embedding.random_weights: true for the random control)",
            )
        return Path(_resolve_object(spec.packaged_weights)())
    return Path(weights).expanduser()


def load_weights_file(encoder: str, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or .bin/.pth/.pt with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(encoder, path, "the file does not exist",
                           "check embedding.weights (a local .safetensors, .bin or .pth file)")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(encoder, path, f"unsupported file type {path.suffix!r}",
                           f"give a {', '.join(WEIGHT_SUFFIXES)} file")
    state: Any
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise _unreadable(encoder, path, exc) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError) as exc:
            # Refused by weights_only (a pickled module), truncated, or not a checkpoint at all.
            raise _unreadable(encoder, path, exc) from None
    return _unwrap_state_dict(encoder, path, state)


def _unreadable(encoder: str, path: Path, exc: Exception) -> WeightsError:
    return WeightsError(encoder, path, f"the file cannot be read ({type(exc).__name__}: {exc})",
                        "re-download it; a .pth must hold plain tensors (weights_only)")


def _unwrap_state_dict(encoder: str, path: Path, state: Any) -> dict[str, torch.Tensor]:
    while isinstance(state, Mapping):
        inner = [k for k in _CONTAINER_KEYS if isinstance(state.get(k), Mapping)]
        if not inner or any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        state = state[inner[0]]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(encoder, path, "the file does not hold a state dict of tensors",
                           "save model.state_dict() rather than the model object")
    return dict(state)


def check_state_dict(
    spec: EncoderSpec,
    expected: Mapping[str, torch.Tensor],
    loaded: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
) -> dict[str, torch.Tensor]:
    """Rename (per the spec's key map) and verify every tensor's presence and shape."""
    fix = f"use the checkpoint published at {spec.model_card} for {spec.name!r}"
    try:
        state = apply_key_map(spec.key_map, loaded, expected)
    except KeyMapError as exc:
        raise WeightsError(spec.name, path, str(exc), fix) from None
    for name, target in expected.items():
        if name not in state:
            raise WeightsError(spec.name, path, f"tensor {name!r} is missing from the file", fix)
        if tuple(state[name].shape) != tuple(target.shape):
            raise WeightsError(
                spec.name, path,
                f"tensor {name!r} has shape {tuple(state[name].shape)}, the architecture needs "
                f"{tuple(target.shape)}", fix,
            )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise WeightsError(
            spec.name, path,
            f"tensor {unexpected[0]!r} is not part of the architecture "
            f"({len(unexpected)} unexpected tensors)", fix,
        )
    return {k: state[k] for k in expected}


def _resolve_object(dotted: str) -> Any:
    """'pkg.module:attr.sub' or 'pkg.module.attr' -> the object."""
    if ":" in dotted:
        module_name, attr_path = dotted.split(":", 1)
    else:
        module_name, attr_path = dotted.rsplit(".", 1)
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj
