"""cache/fast_inline.py: numba-cuda's IR inlining with one copy of the callee's scope per copy
gives the same PTX as numba's own (a kernel of nested inline="always" closures, branches and a
loop, compiled both ways), and the patch is undone on exit."""

import re

from numba import cuda
from numba.cuda import types

from pyfp8gemm.cache import compiler
from pyfp8gemm.cache.fast_inline import faster_inlining


def _make_kernel():
    inline = cuda.jit(device=True, inline="always")

    @inline
    def leaf(x, k):
        return x * 3 + k if x > k else x - k

    @inline
    def middle(x, n):
        total = 0
        for i in range(n):
            total += leaf(x + i, i)
        return total, leaf(total, n)

    @inline
    def outer(x, n):
        a, b = middle(x, n)
        c, d = middle(b, n + 1)
        return a + b + c + d

    def kernel(out, n):
        i = cuda.grid(1)
        if i < n:
            out[i] = outer(i, n) + outer(n, i)
    return kernel


def _ptx():
    ptx, _ = cuda.compile_ptx(_make_kernel(), (types.int64[:], types.int64),
                              cc=compiler.COMPUTE_CAPABILITY)
    return re.sub(r"_Z\w+", "F", ptx)   # mangled names are unique per function object


def test_same_ptx_with_and_without():
    from numba.cuda.core import inline_closurecall as ic

    plain = _ptx()
    original = ic.InlineWorker.inline_ir
    with faster_inlining():
        assert ic.InlineWorker.inline_ir is not original
        fast = _ptx()
    assert ic.InlineWorker.inline_ir is original and ic.copy.__name__ == "copy"
    assert fast == plain
    assert "mul.lo.s64" in plain or "mad.lo.s64" in plain   # the leaf's arithmetic is there
