"""Typed aliases: units as types, so microns and pixels are never confused."""

from __future__ import annotations

from os import PathLike
from typing import Literal, NewType

Microns = NewType("Microns", float)
"""A physical length in micrometres (µm)."""

MicronsPerPixel = NewType("MicronsPerPixel", float)
"""A resolution in µm per pixel ("mpp"); 20x is taken as 0.5 mpp."""

Pixels = NewType("Pixels", int)
"""A length in pixels at a stated pyramid level (level 0 unless said otherwise)."""

PathLikeStr = str | PathLike[str]

OnError = Literal["stop", "skip"]
"""What a stage does with a bad slide: stop before any work, or skip it and list it."""
