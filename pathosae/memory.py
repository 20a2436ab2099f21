"""Freed memory goes back to the operating system (glibc's allocator settings).

The stages after embedding work in chunks: blocks of tens of MB (a chunk's SAE codes, its edited
copy) are allocated and freed one after another. glibc serves a block from its own mapping,
returned on free, only above a threshold that it *raises* to the size of each mapped block
freed, up to 32 MiB. After the first such free, chunk-sized blocks come from the heap instead,
and freed heap pages stay resident: at 600 slides this free heap was 0.3 GB of the edit stage's
peak RSS. A fixed threshold keeps every block of ``LARGE_BLOCK_BYTES`` or more mapped. Smaller
blocks stay in the heap, where reuse is cheap.

Each mapped block costs page faults when it is first touched, so loops that allocate large
tensors at every step (SAE training: its weight gradients are 26 MB at 1,280 × 5,120; a conv
net's activations) ran 1.5-2x slower with the threshold (the demo: 13.9 min against 7.5). The
pipeline sets it only for the stages that declare ``Stage.map_large_blocks`` (edit, sharpen).
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
LARGE_BLOCK_BYTES = 16 * 2**20


def map_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Serve allocations of ``threshold`` bytes or more from their own mappings (returned to the
    system when freed), for the rest of this process. True when set; False where the C library
    is not glibc (nothing changes there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
