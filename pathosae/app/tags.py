"""Unit tags a reader sets in the app (phenotype / confounder / unclear), kept in RUN/app/tags.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, get_args

from pathosae.errors import PathosaeError
from pathosae.io import read_json, write_json_atomic

Tag = Literal["phenotype", "confounder", "unclear"]
TAGS: tuple[str, ...] = get_args(Tag)


class TagStore:
    """``{"<sae>/<unit>": {"tag": ..., "note": ..., "updated": ...}}``, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> dict[str, dict[str, str]]:
        if not self.path.is_file():
            return {}
        try:
            data = read_json(self.path)
        except (OSError, ValueError) as exc:
            raise PathosaeError(f"{self.path} is not valid JSON ({exc}). Fix: delete or repair it; "
                                "it only holds the app's unit tags.") from None
        return data if isinstance(data, dict) else {}

    def get(self, sae: str, unit: int) -> dict[str, str] | None:
        return self.all().get(f"{sae}/{int(unit)}")

    def for_sae(self, sae: str) -> dict[int, str]:
        prefix = f"{sae}/"
        return {int(k[len(prefix):]): v["tag"] for k, v in self.all().items()
                if k.startswith(prefix) and "tag" in v}

    def set(self, sae: str, unit: int, tag: str | None, note: str = "") -> None:
        """Set (or with ``tag=None`` clear) a unit's tag."""
        if tag is not None and tag not in TAGS:
            raise PathosaeError(f"unknown tag {tag!r}. Fix: use one of {', '.join(TAGS)}.")
        data = self.all()
        key = f"{sae}/{int(unit)}"
        if tag is None:
            data.pop(key, None)
        else:
            data[key] = {"tag": tag, "note": note, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(self.path, data)
