"""A faster copy of inlined IR for numba-cuda's `inline="always"` (compile time only).

numba inlines a device function by deep-copying the callee's IR twice per call site, one block
at a time (`copy.deepcopy(block)` in InlineWorker.inline_ir's `copy_ir`), each block with a
fresh memo. Every block's variables point at the function's one `Scope`, which holds every
variable of the function, so each block's copy re-copies the whole scope: the cost grows with
blocks x variables. Our kernels inline closures into closures ~80 times, and this copying was
two thirds of a kernel's compile (cProfile: 5.4 M deepcopy calls, 13 of 20 s).

`faster_inlining()` makes the blocks of one `copy_ir` share one memo (per source scope), so the
scope and every variable are copied once per copy, as a single deep copy of the whole IR would.
The copies stay independent of the original and of each other: a memo lives for one
`inline_ir` call and is keyed by the scope being copied (its two `copy_ir`s copy different
scopes). Enabled around `compile_ptx` only; it changes no generated code (checked: every
kernel's SASS is identical with and without it, scripts/compare_kernels.py).
"""

from __future__ import annotations

import contextlib
import copy as _copy
import threading

_state = threading.local()


class _SharedMemoCopy:
    """Stands in for the `copy` module inside numba's inline_closurecall: deepcopy of an IR
    block uses the memo of its scope in the current inline_ir call."""

    def __getattr__(self, name):
        return getattr(_copy, name)

    @staticmethod
    def deepcopy(value, memo=None):
        memos = getattr(_state, "memos", None)
        scope = getattr(value, "scope", None)
        if memo is None and memos is not None and scope is not None:
            memo = memos.setdefault(id(scope), {})
        return _copy.deepcopy(value, memo)


@contextlib.contextmanager
def faster_inlining():
    """Within the block, numba-cuda's IR inlining copies each callee's IR once per copy."""
    from numba.cuda.core import inline_closurecall as ic

    original_inline_ir = ic.InlineWorker.inline_ir
    original_copy = ic.copy

    def inline_ir(self, *args, **kwargs):
        saved = getattr(_state, "memos", None)
        _state.memos = {}
        try:
            return original_inline_ir(self, *args, **kwargs)
        finally:
            _state.memos = saved

    ic.InlineWorker.inline_ir = inline_ir
    ic.copy = _SharedMemoCopy()
    try:
        yield
    finally:
        ic.InlineWorker.inline_ir = original_inline_ir
        ic.copy = original_copy
