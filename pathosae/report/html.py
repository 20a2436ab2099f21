"""Small HTML helpers: escaped text, tables and images embedded as data URIs."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd
from PIL import Image

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #222; line-height: 1.45; }
h1 { font-size: 1.7rem; } h2 { border-bottom: 2px solid #b03a72; padding-bottom: .2rem;
margin-top: 2.4rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .6rem 0; }
td, th { border: 1px solid #ccc; padding: .2rem .5rem; text-align: right; }
th { background: #f5eef2; } td:first-child, th:first-child { text-align: left; }
.how { color: #555; font-style: italic; margin: .2rem 0 .8rem; }
.missing { color: #8a5a00; background: #fff6e0; padding: .5rem .8rem; border-radius: 4px; }
.grid { display: flex; flex-wrap: wrap; gap: .6rem; }
.grid figure { margin: 0; font-size: .75rem; text-align: center; }
img { max-width: 100%; }
.kpi { display: inline-block; margin: .3rem 1rem .3rem 0; padding: .5rem .8rem;
       background: #f5eef2; border-radius: 6px; }
.kpi b { font-size: 1.2rem; display: block; }
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def table(frame: pd.DataFrame, max_rows: int = 30, floatfmt: str = "{:.3g}") -> str:
    shown = frame.head(max_rows)
    body = shown.to_html(index=False, border=0, float_format=floatfmt.format, na_rep="–",
                         escape=True)
    more = f"<p class='how'>{len(frame) - max_rows} more rows in the file.</p>" if len(
        frame) > max_rows else ""
    return body + more


def image_file(path: Path, max_px: int = 900) -> str:
    """An image file as an inline PNG (downscaled so the report stays small)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((max_px, max_px))
        return image(img)


def image(img: Image.Image) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}'>"


def how(text: str) -> str:
    """The one sentence under a figure that says how to read it."""
    return f"<p class='how'>{esc(text)}</p>"


def missing(stage: str, command: str) -> str:
    return (f"<p class='missing'>The {esc(stage)} stage has not written its outputs yet. "
            f"Produce them with <code>{esc(command)}</code>.</p>")
