"""The custom ops (torch.ops.pyfp8gemm.*): opcheck, torch.compile with no graph break, the
public functions' routing (direct path in eager, the ops when traced), and on a GPU: CUDA-graph
capture and CPU-vs-GPU agreement."""

from __future__ import annotations

import shutil

import pytest
import torch

import pyfp8gemm
from pyfp8gemm import ops, quantize
from pyfp8gemm.host import gemm
from pyfp8gemm.testing import calc_diff, reference_gemm

E4M3 = torch.float8_e4m3fn
BF16 = torch.bfloat16


def _operands(generator, m, n, k):
    x = torch.randn(m, k, generator=generator).to(BF16)
    w = torch.randn(n, k, generator=generator).to(BF16)
    return x, w, quantize(x, "1x128"), quantize(w, "128x128")


# ---------------------------------------------------------------------------------------------
# opcheck
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,n,k", [(64, 128, 256), (5, 136, 208)])
def test_opcheck_gemm_ops(fp8_allclose, generator, m, n, k):
    _, _, a, b = _operands(generator, m, n, k)
    out = torch.empty(m, n, dtype=BF16)
    torch.library.opcheck(torch.ops.pyfp8gemm.fp8_gemm_nt, (a.data, a.scale, b.data, b.scale, out))
    torch.library.opcheck(torch.ops.pyfp8gemm.fp8_gemm, (a.data, a.scale, b.data, b.scale))
    # Row-major activation scales (the op converts them, as fp8_gemm_nt does).
    torch.library.opcheck(torch.ops.pyfp8gemm.fp8_gemm,
                          (a.data, a.scale.contiguous(), b.data, b.scale))


@pytest.mark.parametrize("granularity", ["1x128", "128x128"])
@pytest.mark.parametrize("shape", [(64, 256), (5, 200), (130, 7)])
def test_opcheck_quantize(fp8_allclose, generator, granularity, shape):
    x = torch.randn(*shape, generator=generator).to(BF16)
    torch.library.opcheck(torch.ops.pyfp8gemm.quantize, (x, granularity))


def test_ops_compute_what_the_public_functions_compute(generator):
    x, _, a, b = _operands(generator, 32, 128, 384)
    out = torch.empty(32, 128, dtype=BF16)
    torch.ops.pyfp8gemm.fp8_gemm_nt(a.data, a.scale, b.data, b.scale, out)
    assert calc_diff(out, reference_gemm(a, b)) < 1e-5
    assert torch.equal(torch.ops.pyfp8gemm.fp8_gemm(a.data, a.scale, b.data, b.scale), out)
    data, scale = torch.ops.pyfp8gemm.quantize(x, "1x128")
    assert torch.equal(data.view(torch.uint8), a.data.view(torch.uint8))
    assert torch.equal(scale, a.scale) and scale.stride() == a.scale.stride()


def test_fake_impls_refuse_what_the_eager_path_refuses(generator):
    """Shapes the GPU refuses are refused at trace time too (FakeTensor mode)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    _, _, a, b = _operands(generator, 64, 128, 256)
    with FakeTensorMode() as mode:
        fa, fs = mode.from_tensor(a.data), mode.from_tensor(a.scale)
        fb, fbs = mode.from_tensor(b.data), mode.from_tensor(b.scale)
        with pytest.raises(ValueError, match=r"out: expected shape \(64, 128\)"):
            torch.ops.pyfp8gemm.fp8_gemm_nt(fa, fs, fb, fbs, torch.empty(64, 64, dtype=BF16))
        with pytest.raises(ValueError, match=r"N .*multiple of 8"):
            torch.ops.pyfp8gemm.fp8_gemm(fa, fs, fb[:12], fbs)
        with pytest.raises(ValueError, match="granularity"):
            torch.ops.pyfp8gemm.quantize(torch.empty(4, 4), "2x2")
        result = torch.ops.pyfp8gemm.fp8_gemm(fa, fs, fb, fbs)
        assert result.shape == (64, 128) and result.dtype == BF16


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------


class _Model(torch.nn.Module):
    """matmul with float inputs (quantize on the fly), then quantize + fp8_gemm_nt with a
    pre-quantized weight, then matmul with FP8Tensors."""

    def __init__(self, w1, w2):
        super().__init__()
        self.w1 = torch.nn.Parameter(w1, requires_grad=False)        # (N1, K) bf16
        self.w2 = quantize(w2, "128x128")                              # (N2, N1) FP8

    def forward(self, x):
        h = pyfp8gemm.matmul(x, self.w1.t())                           # (..., N1)
        h2 = h.reshape(-1, h.shape[-1])
        q = quantize(h2, "1x128")
        y = torch.empty(h2.shape[0], self.w2.shape[0], dtype=BF16, device=h.device)
        pyfp8gemm.fp8_gemm_nt(q, self.w2, y)
        z = pyfp8gemm.matmul(quantize(y, "1x128"), self.w2.t())  # (M, N1)
        return torch.relu(z.float()) + 1.0


def _compiled_matches_eager(backend, generator):
    torch._dynamo.reset()
    x = torch.randn(2, 24, 256, generator=generator).to(BF16)
    w1 = torch.randn(128, 256, generator=generator).to(BF16)
    w2 = torch.randn(128, 128, generator=generator).to(BF16)
    model = _Model(w1, w2)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    result = compiled(x)
    assert torch.equal(result, eager)
    # Fresh inputs through the same compiled graph.
    x2 = torch.randn(2, 24, 256, generator=generator).to(BF16)
    assert torch.equal(compiled(x2), model(x2))


def test_compile_fullgraph_aot_eager(generator):
    _compiled_matches_eager("aot_eager", generator)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor's CPU backend needs a C++ compiler")
def test_compile_fullgraph_inductor(generator):
    _compiled_matches_eager("inductor", generator)


def test_traced_graph_calls_the_ops(generator):
    """The graph dynamo captures holds the custom ops (no graph break, no Python inlined
    into kernels' host code)."""
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module

    torch._dynamo.reset()
    x = torch.randn(16, 256, generator=generator).to(BF16)
    w = torch.randn(128, 256, generator=generator).to(BF16)
    fn = torch.compile(lambda x, w: pyfp8gemm.matmul(x, w.t()), fullgraph=True, backend=backend)
    torch.testing.assert_close(fn(x, w), pyfp8gemm.matmul(x, w.t()), rtol=0, atol=0)
    code = graphs[0].code
    assert "pyfp8gemm.quantize" in code and "pyfp8gemm.fp8_gemm" in code


def test_eager_calls_take_the_direct_path(monkeypatch, generator):
    """In eager mode the public functions never go through the dispatcher."""
    def no_op(*args, **kwargs):
        raise AssertionError("an eager call went through torch.ops.pyfp8gemm")

    x, w, a, b = _operands(generator, 8, 128, 256)
    for name in ("fp8_gemm_nt", "fp8_gemm", "quantize"):
        monkeypatch.setattr(getattr(ops, name), "__call__", no_op, raising=False)
    monkeypatch.setattr(torch.ops, "pyfp8gemm", None)
    out = torch.empty(8, 128, dtype=BF16)
    pyfp8gemm.fp8_gemm_nt(a, b, out)
    pyfp8gemm.matmul(x, w.t())
    quantize(x, "1x128")


def test_custom_op_helper_registers_in_the_namespace():
    def fake(x, times):
        return torch.empty_like(x)

    @ops.custom_op("_test_scale_by", fake=fake)
    def scale_by(x: torch.Tensor, times: int) -> torch.Tensor:
        return x * times

    x = torch.randn(3, 4)
    assert torch.equal(torch.ops.pyfp8gemm._test_scale_by(x, 3), x * 3)
    torch.library.opcheck(torch.ops.pyfp8gemm._test_scale_by, (x, 2))
    assert ops.NAMESPACE == "pyfp8gemm"


# ---------------------------------------------------------------------------------------------
# On a Hopper GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_ops_agree_with_the_cpu_backend(generator):
    x, w, a, b = _operands(generator, 256, 512, 1024)
    cpu = torch.ops.pyfp8gemm.fp8_gemm(a.data, a.scale, b.data, b.scale)
    ac, bc = a.cuda(), b.cuda()
    gpu = torch.ops.pyfp8gemm.fp8_gemm(ac.data, ac.scale, bc.data, bc.scale)
    assert gpu.device.type == "cuda"
    assert calc_diff(gpu.cpu(), cpu) < 1e-5
    assert calc_diff(pyfp8gemm.matmul(x.cuda(), w.cuda().t()).cpu(),
                     pyfp8gemm.matmul(x, w.t())) < 1e-5


@pytest.mark.gpu
def test_gpu_ops_under_cuda_graph_capture(generator):
    x, _, a, b = _operands(generator, 128, 256, 512)
    xc, ac, bc = x.cuda(), a.cuda(), b.cuda()
    out = torch.empty(128, 256, dtype=BF16, device="cuda")
    # Warm up (compiles/loads the kernels) outside the capture.
    torch.ops.pyfp8gemm.fp8_gemm_nt(ac.data, ac.scale, bc.data, bc.scale, out)
    torch.ops.pyfp8gemm.quantize(xc, "1x128")
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            data, scale = torch.ops.pyfp8gemm.quantize(xc, "1x128")
            torch.ops.pyfp8gemm.fp8_gemm_nt(data, scale, bc.data, bc.scale, out)
    out.zero_()
    xc.copy_(torch.randn(128, 512, generator=generator).to(BF16))
    graph.replay()
    torch.cuda.synchronize()
    expected = reference_gemm(quantize(xc.cpu(), "1x128"), b)
    assert calc_diff(out.cpu(), expected) < 1e-5


@pytest.mark.gpu
def test_gpu_compiled_model_matches_eager(generator):
    torch._dynamo.reset()
    w = torch.randn(256, 512, generator=generator).to(BF16).cuda()
    x = torch.randn(64, 512, generator=generator).to(BF16).cuda()
    fn = torch.compile(lambda x: pyfp8gemm.matmul(x, w.t()), fullgraph=True, backend="aot_eager")
    assert torch.equal(fn(x), pyfp8gemm.matmul(x, w.t()))


def test_every_op_exists_after_import_pyfp8gemm():
    """A torch.export artifact that uses any of the ops loads after a plain `import pyfp8gemm`
    (the grouped and 1D1D modules register theirs at import, no numba needed)."""
    import subprocess
    import sys

    code = ("import sys, torch, pyfp8gemm; ops = torch.ops.pyfp8gemm; "
            "names = ['fp8_gemm_nt', 'fp8_gemm', 'quantize', 'fp8_gemm_nt_1d1d', "
            "'k_grouped_fp8_gemm_nt_contiguous', 'm_grouped_fp8_gemm_nt_contiguous', "
            "'m_grouped_fp8_gemm_nt_masked']; "
            "[getattr(ops, n).default for n in names]; print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"        # and import stays light
