"""Tile encoders: a registry of foundation models (timm architectures, published transforms and
pooling), weights from local files, and a pretrained CPU default (EfficientNet-Lite0)."""

from pathosae.encoders.loading import (
    Encoder,
    WeightsError,
    build_encoder,
    check_state_dict,
    create_model,
    load_weights_file,
)
from pathosae.encoders.pooling import pool_features
from pathosae.encoders.registry import (
    DEFAULT_ENCODER,
    ENCODERS,
    EncoderSpec,
    get_spec,
    list_encoders,
)
from pathosae.encoders.transforms import TileTransform

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "Encoder",
    "EncoderSpec",
    "TileTransform",
    "WeightsError",
    "build_encoder",
    "check_state_dict",
    "create_model",
    "get_spec",
    "list_encoders",
    "load_weights_file",
    "pool_features",
]
