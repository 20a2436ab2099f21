"""Stain and scanner physics: Beer-Lambert optical densities, site/batch stain shifts, scanner optics.

Pixels are ``RGB = 255 * exp(-OD)`` with ``OD = c_H * h + c_E * e + OD_glass`` per pixel, where
``h`` and ``e`` are unit hematoxylin and eosin absorbance vectors. A site (and, nested in it, a
stain batch) scales the concentrations and rotates the stain vectors about the grey axis in OD
space (a hue change); a scanner applies its own per-channel gain and gamma, blur, sensor noise and
JPEG quality.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from pathosae.synth.params import SynthParams

# Ruifrok & Johnston's H&E absorbance vectors (RGB order), the usual reference for H&E.
REFERENCE_H = np.array([0.650, 0.704, 0.286])
REFERENCE_E = np.array([0.072, 0.990, 0.105])

_SITE_LOG_SCALE = 0.20  # log concentration shift of a site at strength 1
_SITE_HUE_DEG = 8.0  # stain-vector rotation of a site at strength 1
_SCANNER_GAIN = 0.03  # glass stays below the usual tissue saturation
_SCANNER_GAMMA = 0.15
_SCANNER_BLUR_PX = 1.2
_SCANNER_NOISE = 3.0
_BASE_NOISE = 1.0
_LUT_STEPS = 16  # colour-response table entries per 8-bit level


@dataclass(frozen=True)
class StainEffect:
    """The stain applied to one slide (site + batch + slide jitter already combined)."""

    h_scale: float
    e_scale: float
    h_hue_deg: float
    e_hue_deg: float

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            rotate_about_grey(REFERENCE_H, self.h_hue_deg),
            rotate_about_grey(REFERENCE_E, self.e_hue_deg),
        )

    def as_record(self) -> dict[str, float]:
        h, e = self.vectors()
        record = {f"stain_{k}": float(v) for k, v in asdict(self).items()}
        record.update({f"h_vector_{c}": float(v) for c, v in zip("rgb", h, strict=True)})
        record.update({f"e_vector_{c}": float(v) for c, v in zip("rgb", e, strict=True)})
        return record


@dataclass(frozen=True)
class ScannerEffect:
    """How one scanner images a slide."""

    gain_r: float
    gain_g: float
    gain_b: float
    gamma: float
    blur_sigma_px: float
    noise_sd: float
    jpeg_quality: int

    def as_record(self) -> dict[str, float]:
        return {f"scanner_{k}": v for k, v in asdict(self).items()}


def rotate_about_grey(vector: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate an OD vector about the grey axis (1,1,1)/sqrt(3): a pure hue change (Rodrigues)."""
    axis = np.full(3, 1 / np.sqrt(3))
    unit = vector / np.linalg.norm(vector)
    angle = np.deg2rad(degrees)
    rotated = (
        unit * np.cos(angle)
        + np.cross(axis, unit) * np.sin(angle)
        + axis * (axis @ unit) * (1 - np.cos(angle))
    )
    rotated = np.maximum(rotated, 0.01)  # absorbance is never negative
    return rotated / np.linalg.norm(rotated)


def site_stain(site: int, params: SynthParams, phase: float) -> StainEffect:
    """Sites spread evenly on a circle of stain shifts, so no two sites stain alike by chance."""
    k = params.site_stain_strength
    theta = 2 * np.pi * site / params.n_sites + phase
    return StainEffect(
        h_scale=float(np.exp(_SITE_LOG_SCALE * k * np.cos(theta))),
        e_scale=float(np.exp(_SITE_LOG_SCALE * k * np.sin(theta))),
        h_hue_deg=float(_SITE_HUE_DEG * k * np.sin(theta + 1.0)),
        e_hue_deg=float(_SITE_HUE_DEG * k * np.cos(theta + 2.0)),
    )


def batch_stain(site_effect: StainEffect, rng: np.random.Generator, params: SynthParams) -> StainEffect:
    """A stain batch: a smaller random shift around its site's stain."""
    k = params.site_stain_strength * params.batch_stain_strength
    d_h, d_e = rng.normal(0, _SITE_LOG_SCALE * k, 2)
    r_h, r_e = rng.normal(0, _SITE_HUE_DEG * k, 2)
    return StainEffect(
        h_scale=site_effect.h_scale * float(np.exp(d_h)),
        e_scale=site_effect.e_scale * float(np.exp(d_e)),
        h_hue_deg=site_effect.h_hue_deg + float(r_h),
        e_hue_deg=site_effect.e_hue_deg + float(r_e),
    )


def slide_stain(batch_effect: StainEffect, rng: np.random.Generator, params: SynthParams) -> StainEffect:
    """Slide-to-slide variation (section thickness) that belongs to no site."""
    d_h, d_e = rng.normal(0, params.slide_stain_jitter, 2)
    return StainEffect(
        h_scale=batch_effect.h_scale * float(np.exp(d_h)),
        e_scale=batch_effect.e_scale * float(np.exp(d_e)),
        h_hue_deg=batch_effect.h_hue_deg,
        e_hue_deg=batch_effect.e_hue_deg,
    )


def scanner_effect(scanner: int, params: SynthParams, phase: float, order: np.ndarray) -> ScannerEffect:
    """Scanner ``scanner``: colour response on a circle; blur, noise and JPEG loss rise with rank."""
    k = params.scanner_strength
    n = params.n_scanners
    theta = 2 * np.pi * scanner / n + phase
    rank = float(order[scanner]) / (n - 1) if n > 1 else 0.0
    q_low, q_high = params.jpeg_quality
    gains = [1 + _SCANNER_GAIN * k * np.cos(theta + 2 * np.pi * c / 3) for c in range(3)]
    return ScannerEffect(
        gain_r=float(gains[0]),
        gain_g=float(gains[1]),
        gain_b=float(gains[2]),
        gamma=float(1 + _SCANNER_GAMMA * k * np.cos(theta + 0.5)),
        blur_sigma_px=float(_SCANNER_BLUR_PX * k * rank),
        noise_sd=float(_BASE_NOISE + _SCANNER_NOISE * k * rank),
        jpeg_quality=int(np.clip(round(q_high - min(k, 1.0) * rank * (q_high - q_low)), q_low, q_high)),
    )


def render_rgb(
    c_h: np.ndarray, c_e: np.ndarray, od_glass: np.ndarray, stain: StainEffect
) -> np.ndarray:
    """Beer-Lambert: float32 RGB (0-255) from stain concentrations, under a slide's stain."""
    h, e = stain.vectors()
    rgb = np.empty((*c_h.shape, 3), dtype=np.float32)
    c_h = c_h * np.float32(stain.h_scale)
    c_e = c_e * np.float32(stain.e_scale)
    for channel in range(3):
        od = c_h * np.float32(h[channel]) + c_e * np.float32(e[channel]) + od_glass
        np.exp(-od, out=od)
        rgb[..., channel] = od
    rgb *= np.float32(255.0)
    return rgb


def apply_scanner(
    rgb: np.ndarray,
    scanner: ScannerEffect,
    rng: np.random.Generator,
    channel_noise: np.ndarray | None = None,
) -> np.ndarray:
    """Optics (blur), colour response (gain, gamma), sensor noise; returns uint8 RGB.

    Works in place on ``rgb`` (float32, 0-255) to keep memory flat on large slides.
    ``channel_noise`` (H, W, 3 unit normals), when given, is the sensor noise of each channel
    instead of a field drawn from ``rng``: a crop of a slide then gets the slide's own noise
    (see :func:`sensor_noise`).
    """
    gains = (scanner.gain_r, scanner.gain_g, scanner.gain_b)
    noise = rng.standard_normal(rgb.shape[:2], dtype=np.float32) if channel_noise is None else None
    levels = np.arange(256 * _LUT_STEPS, dtype=np.float64) / (255 * _LUT_STEPS)
    for channel in range(3):
        plane = rgb[..., channel]
        if scanner.blur_sigma_px > 0.05:
            plane = ndimage.gaussian_filter(plane, scanner.blur_sigma_px, truncate=3.0)
        # Gain and gamma through a fine look-up table: far cheaper than a power per pixel.
        curve = (255 * gains[channel] * levels**scanner.gamma).astype(np.float32)
        index = np.clip(plane * np.float32(_LUT_STEPS), 0, curve.size - 1).astype(np.int32)
        plane = curve[index]
        # One noise field, shifted per channel: independent-looking noise for a third of the draws.
        if channel_noise is None:
            assert noise is not None  # drawn above when no channel noise is given
            plane += np.roll(noise, 7 * channel, axis=1) * np.float32(scanner.noise_sd)
        else:
            plane += channel_noise[..., channel] * np.float32(scanner.noise_sd)
        rgb[..., channel] = plane
    np.clip(rgb, 0, 255, out=rgb)
    return np.rint(rgb).astype(np.uint8)


def sensor_noise(noise: np.ndarray, channel: int) -> np.ndarray:
    """The noise ``apply_scanner`` adds to ``channel`` when it draws the field ``noise`` itself."""
    return np.roll(noise, 7 * channel, axis=1)


def blur_margin(scanner: ScannerEffect) -> int:
    """Pixels a crop needs around it so that the scanner's blur inside equals the full slide's."""
    return int(3.0 * scanner.blur_sigma_px + 0.5) + 1
