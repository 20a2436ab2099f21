"""Declarative edit specs: a named list of operations, read and written as JSON or YAML.

Operations run in order. Consecutive SAE-code operations share one encode/decode (so
``ablate a`` then ``ablate b`` equals ``ablate a ∪ b``); embedding-space operations act on the
current embeddings in between.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pathosae.errors import ConfigError


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ablate(_Op):
    op: Literal["ablate"] = "ablate"
    units: list[int] = Field(min_length=1)


class Scale(_Op):
    op: Literal["scale"] = "scale"
    units: list[int] = Field(min_length=1)
    factor: float


class Clamp(_Op):
    op: Literal["clamp"] = "clamp"
    units: list[int] = Field(min_length=1)
    value: float


class RandomUnits(_Op):
    """Ablate ``count`` units drawn at random with ``seed`` (the random-unit baseline)."""

    op: Literal["random_units"] = "random_units"
    count: int = Field(ge=1)
    seed: int = 0


class _Directional(_Op):
    """A direction given inline (``vector``) or by name from the run's directions file."""

    vector: list[float] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> _Directional:
        if (self.vector is None) == (self.name is None):
            raise ValueError("give exactly one of 'vector' or 'name'")
        return self


class ProjectCode(_Directional):
    """Project SAE codes onto the complement of a code-space direction."""

    op: Literal["project_code"] = "project_code"


class ProjectOut(_Directional):
    """Remove a direction from the embeddings."""

    op: Literal["project_out"] = "project_out"


class Leace(_Op):
    """LEACE erasure of a metadata column, fitted on the training embeddings."""

    op: Literal["leace"] = "leace"
    concept: str


Operation = Annotated[
    Ablate | Scale | Clamp | RandomUnits | ProjectCode | ProjectOut | Leace,
    Field(discriminator="op"),
]
CODE_OPS = ("ablate", "scale", "clamp", "random_units", "project_code")


class EditSpec(BaseModel):
    """A named edit: operations applied in order."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    ops: list[Operation] = Field(min_length=1)
    layer: Literal["embedding", "adapter"] = Field(
        "embedding", description="embedding: the foundation-model embeddings through the run's "
        "SAE. adapter: the adapter layer of an SAE-ception model through that cycle's SAE.",
    )
    model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$",
        description="adapter layer: the SAE-ception model folder under RUN/saeception/, e.g. "
        "cycle_3/injected_seed0 (or give it with `pathosae edit --model`).",
    )

    @model_validator(mode="after")
    def _model_only_for_adapter(self) -> EditSpec:
        if self.model is not None and self.layer != "adapter":
            raise ValueError("'model' names an SAE-ception model: it needs layer: adapter")
        if self.model is not None and ".." in self.model.split("/"):
            raise ValueError("'model' must be a folder under RUN/saeception/ (no '..')")
        return self

    @property
    def needs_sae(self) -> bool:
        return any(o.op in CODE_OPS for o in self.ops)

    def n_units(self) -> int:
        """Units the code operations touch (random draws count their ``count``)."""
        units: set[int] = set()
        extra = 0
        for o in self.ops:
            if isinstance(o, RandomUnits):
                extra += o.count
            elif hasattr(o, "units"):
                units |= set(o.units)
        return len(units) + extra

    def to_json(self) -> str:
        # The default layer is left out, so embedding specs read as they always have.
        skip = {"layer"} if self.layer == "embedding" else set()
        return json.dumps(self.model_dump(mode="json", exclude_none=True, exclude=skip), indent=2) + "\n"

    @classmethod
    def from_file(cls, path: str | Path) -> EditSpec:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"edit spec {path} does not exist. Fix: pass an existing .json/.yaml file.")
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            return cls.model_validate(data)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"edit spec {path} is not valid {path.suffix[1:]}: {exc}") from exc
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(
                f"edit spec {path} is invalid: {problems}. Fix: see pathosae.edit.spec for the "
                "operations (ablate, scale, clamp, random_units, project_code, project_out, leace) and "
                "the layer (embedding, or adapter with an SAE-ception model)."
            ) from None
