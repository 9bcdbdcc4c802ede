"""Keep freed tensor memory in the process instead of handing it back to the OS per op.

glibc's malloc serves every block above its mmap threshold (at most 32 MB, usually far less)
with a fresh ``mmap`` and returns it with ``munmap`` when freed. A Conv4 step at batch 128
allocates and frees activations of ~25 MB dozens of times, so each of them is page-faulted
and zeroed by the kernel again on every forward and backward pass (docs/performance.md has
what that costs). Raising the thresholds once makes malloc reuse
those blocks. Peak memory barely moves (the same blocks are reused); the resident size just
does not shrink between passes.

The PyTorch performance guide's alternative is to preload jemalloc or tcmalloc; this needs
nothing installed. Other allocators and other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_DONE: list[bool] = []


def tune_allocator(mmap_threshold: int = 1 << 30, top_pad: int = 256 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (idempotent).

    Args:
        mmap_threshold: blocks below this many bytes come from the reusable heap.
        top_pad: bytes of headroom the heap grows by at a time.

    Returns:
        ``True`` if glibc's ``mallopt`` accepted the settings, ``False`` where there is no
        glibc (macOS, Windows, musl) or ``WARPGRAD_TUNE_MALLOC=0`` is set, and nothing was
        changed.
    """
    if _DONE:
        return _DONE[0]
    ok = False
    wanted = os.environ.get("WARPGRAD_TUNE_MALLOC", "1") != "0"
    if wanted and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            # some glibc versions refuse thresholds above 32 MB: fall back to that
            threshold = next((t for t in (mmap_threshold, min(mmap_threshold, 32 << 20))
                              if libc.mallopt(_M_MMAP_THRESHOLD, t) == 1), None)
            ok = threshold is not None and all(
                libc.mallopt(option, value) == 1
                for option, value in ((_M_TRIM_THRESHOLD, 2 * threshold), (_M_TOP_PAD, top_pad)))
        except (OSError, AttributeError):
            ok = False
    _DONE.append(ok)
    return ok
