"""The user's edit specs, split by the layer they act on.

Embedding-layer specs are measured by the edit stage. Adapter-layer specs act inside an
SAE-ception model, which exists only once the sharpen stage ran, so the sharpen stage measures
them (data flows forward: the edit stage never reads SAE-ception models).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pathosae.edit.spec import EditSpec
from pathosae.errors import ConfigError


def read_specs(paths: Sequence[Path]) -> list[EditSpec]:
    """Every spec file, parsed (a bad file fails naming itself)."""
    return [EditSpec.from_file(p) for p in paths]


def embedding_specs(specs: Sequence[EditSpec]) -> list[EditSpec]:
    return [s for s in specs if s.layer == "embedding"]


def on_adapter_of(spec: EditSpec, model: str, source: Path) -> EditSpec:
    """``spec`` on the adapter layer of SAE-ception model ``model`` (``--model`` on the CLI)."""
    if "layer" in spec.model_fields_set and spec.layer == "embedding":
        raise ConfigError(
            f"edit spec {source} says layer: embedding but --model {model} names an "
            "SAE-ception model. Fix: drop --model, or set layer: adapter in the spec."
        )
    return EditSpec.model_validate({**spec.model_dump(), "layer": "adapter", "model": model})


def adapter_specs(
    config_specs: Sequence[Path], extra_specs: Sequence[Path], model: str | None
) -> list[EditSpec]:
    """Adapter-layer specs from the config's ``edit.specs`` and from the command line;
    ``model`` puts every command-line spec on the adapter layer of that SAE-ception model."""
    found = [s for s in read_specs(config_specs) if s.layer == "adapter"]
    for path in extra_specs:
        spec = EditSpec.from_file(path)
        if model is not None:
            spec = on_adapter_of(spec, model, path)
        if spec.layer != "adapter":
            raise ConfigError(
                f"edit spec {path} acts on the embedding layer, which the sharpen stage does not "
                "edit. Fix: measure it with `pathosae edit --spec`, or pass --model "
                "cycle_<k>/<variant>_seed<s> to put it on an SAE-ception model's adapter layer."
            )
        found.append(spec)
    unnamed = [s.name for s in found if s.model is None]
    if unnamed:
        raise ConfigError(
            f"adapter-layer edit spec(s) {unnamed} name no SAE-ception model. Fix: add "
            "model: cycle_<k>/<variant>_seed<s> to the spec or pass `pathosae edit --model`."
        )
    return found


def command_line_embedding_specs(extra_specs: Sequence[Path]) -> list[EditSpec]:
    """The edit stage's command-line specs; an adapter-layer one is sent to the sharpen stage."""
    specs = read_specs(extra_specs)
    adapter = [str(p) for p, s in zip(extra_specs, specs, strict=True) if s.layer == "adapter"]
    if adapter:
        raise ConfigError(
            f"edit spec(s) {adapter} act on the adapter layer of an SAE-ception model, which the "
            "sharpen stage measures. Fix: `pathosae edit --spec FILE --model "
            "cycle_<k>/<variant>_seed<s>` or `pathosae sharpen --spec FILE`."
        )
    return specs
