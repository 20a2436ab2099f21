"""Architecture registry: a name in the config or in cfg.json maps to one SAE class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pathosae.errors import ConfigError
from pathosae.sae.base import SAE

_REGISTRY: dict[str, type[SAE]] = {}


def register(name: str) -> Callable[[type[SAE]], type[SAE]]:
    """Class decorator adding an architecture under ``name``."""

    def decorate(cls: type[SAE]) -> type[SAE]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"SAE architecture {name!r} is registered twice")
        cls.architecture = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    from pathosae.sae import (  # noqa: F401
        batchtopk,
        conditional,
        jumprelu,
        matryoshka,
        offsets_reserved,
        relu,
        reserved,
        topk,
    )


def architectures() -> dict[str, type[SAE]]:
    """All registered architectures by name."""
    _load_builtin()
    return dict(_REGISTRY)


def get_architecture(name: str) -> type[SAE]:
    classes = architectures()
    if name not in classes:
        raise ConfigError(
            f"unknown SAE architecture {name!r}. Fix: use one of {', '.join(sorted(classes))}."
        )
    return classes[name]


def build_sae(architecture: str, **hparams: Any) -> SAE:
    """Instantiate a registered architecture from its saved constructor arguments."""
    cls = get_architecture(architecture)
    try:
        return cls(**hparams)
    except TypeError as exc:
        raise ConfigError(
            f"cannot build SAE {architecture!r} from {sorted(hparams)}: {exc}. Fix: the config "
            "must hold this architecture's fields (see cfg.json written by pathosae)."
        ) from exc
