"""Freed chunk-sized blocks leave the resident set (glibc's mmap threshold held fixed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent("""
    import ctypes, sys
    import numpy as np
    from pathosae.memory import map_large_blocks

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "fixed":
        assert map_large_blocks()
    big = np.ones(30 * 2**20 // 8)  # a mapped block: freeing it raises glibc's own threshold
    del big
    chunk = np.ones(20 * 2**20 // 8)  # a chunk-sized block, 20 MB
    print(libc.mallinfo2().hblkhd >= 20 * 2**20)  # in its own mapping (not the heap)?
""")


def _chunk_is_mapped(mode: str) -> bool:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_chunk_sized_blocks_stay_mapped_with_the_fixed_threshold() -> None:
    """glibc alone serves the 20 MB block from the heap once a 30 MB block was freed (its pages
    then stay resident after free); with ``map_large_blocks`` the block has its own mapping."""
    assert not _chunk_is_mapped("default")
    assert _chunk_is_mapped("fixed")


def test_only_the_declared_stages_map_large_blocks(monkeypatch, tmp_path) -> None:
    """The threshold slows torch-heavy stages (a page fault per large allocation), so the
    pipeline sets it for the chunk-loop stages that declare it (edit, sharpen), not for the
    others (embed, sae, confounders)."""
    from types import SimpleNamespace

    from pathosae import pipeline

    calls: list[str] = []
    monkeypatch.setattr(pipeline, "map_large_blocks", lambda: calls.append("mapped") or True)
    cfg = SimpleNamespace(executor=SimpleNamespace(kind="local"))
    mapped = {}
    for stage in pipeline.STAGES:
        calls.clear()
        pipeline._execute(stage, lambda *_: {}, tmp_path, cfg, "stop")  # type: ignore[arg-type]
        mapped[stage.name] = bool(calls)
    assert {name for name, on in mapped.items() if on} == {"edit", "sharpen"}
