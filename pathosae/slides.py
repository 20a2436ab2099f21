"""Opening whole-slide images through OpenSlide, with errors that say why a file was rejected.

``openslide.open_slide()`` silently falls back to PIL for files OpenSlide rejects (a truncated
TIFF, a PNG renamed .svs), so we always call ``OpenSlide()`` directly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import openslide

from pathosae.errors import SlideError
from pathosae.types import MicronsPerPixel

# TIFF ResolutionUnit values as OpenSlide reports them in tiff.ResolutionUnit.
_UNIT_TO_MICRONS = {"centimeter": 1e4, "inch": 25_400.0, "millimeter": 1e3, "micrometer": 1.0}


def open_slide(path: str | os.PathLike[str], slide_id: str = "") -> openslide.OpenSlide:
    """Open a slide with OpenSlide or raise :class:`SlideError` naming the file and the reason."""
    path = Path(path)
    label = slide_id or path.stem
    if not path.exists():
        raise SlideError(label, str(path), "file does not exist", "correct the manifest's path")
    if path.is_dir():
        raise SlideError(label, str(path), "path is a folder, not a slide file", "point to the file")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(label, str(path), *_why_unsupported(path)) from None
    except openslide.OpenSlideError as exc:
        raise SlideError(
            label, str(path), f"OpenSlide could not read it ({exc}); the file may be truncated or "
            "corrupt", "re-copy or re-export the slide",
        ) from None


_MAGIC = {
    b"\x89PNG": "PNG image",
    b"\xff\xd8\xff": "JPEG image",
    b"GIF8": "GIF image",
    b"%PDF": "PDF document",
    b"PK\x03\x04": "ZIP archive",
}


def _why_unsupported(path: Path) -> tuple[str, str]:
    """Name the reason OpenSlide rejected a file from its first bytes."""
    with path.open("rb") as fh:
        head = fh.read(8)
    if not head:
        return "the file is empty", "re-copy the slide"
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return (
                f"the file is a {kind}, not a whole-slide image (OpenSlide rejects it)",
                "export the slide in a format OpenSlide reads (SVS, NDPI, MRXS, tiled TIFF, ...)",
            )
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return (
            "the file has a TIFF header but OpenSlide cannot read it: it is truncated or "
            "corrupt, or a plain (untiled, single-level) TIFF",
            "re-copy the slide, or convert it to a tiled pyramidal TIFF",
        )
    return (
        "OpenSlide does not recognise this file as a slide (unsupported format)",
        "convert it to a tiled pyramidal TIFF or another format OpenSlide reads",
    )


def slide_mpp(slide: openslide.OpenSlide) -> MicronsPerPixel | None:
    """The level-0 resolution from the slide's own metadata, or None when it carries none.

    Order: ``openslide.mpp-x``; TIFF resolution tags; objective power (20x taken as 0.5 µm/px).
    """
    props = slide.properties
    mpp = _positive_float(props.get(openslide.PROPERTY_NAME_MPP_X))
    if mpp is not None:
        return MicronsPerPixel(mpp)
    x_res = _positive_float(props.get("tiff.XResolution"))
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    if x_res is not None and unit in _UNIT_TO_MICRONS:
        return MicronsPerPixel(_UNIT_TO_MICRONS[unit] / x_res)
    power = _positive_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
    if power is not None:
        return MicronsPerPixel(10.0 / power)
    return None


def resolve_mpp(
    slide: openslide.OpenSlide, manifest_mpp: float | None, slide_id: str, path: str
) -> MicronsPerPixel:
    """Manifest mpp wins (it overrides wrong metadata), else the slide's own, else a clear error."""
    if manifest_mpp is not None and not math.isnan(manifest_mpp):
        return MicronsPerPixel(float(manifest_mpp))
    mpp = slide_mpp(slide)
    if mpp is None:
        raise SlideError(
            slide_id,
            path,
            "the slide records no resolution (no openslide.mpp-x, TIFF resolution or objective "
            "power)",
            "add an 'mpp' column to the manifest with the level-0 µm per pixel (0.25 at 40x, "
            "0.5 at 20x)",
        )
    return mpp


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
