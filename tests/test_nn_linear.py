"""pyfp8gemm.nn on the CPU (reference backend): the Linear's forward, input and weight
gradients against the reference FP8 step (pyfp8gemm.testing.reference_fp8_linear_step), the
drop-in behaviour (constructor, init, state_dict, batch dims, bias, no_grad, autocast, frozen
inputs), the weight cache, main_grad, convert, and a short FP8-vs-bf16 training run."""

from __future__ import annotations

import copy

import pytest
import torch

import pyfp8gemm.nn as fnn
from pyfp8gemm.nn import functional as fnn_functional
from pyfp8gemm.testing import calc_diff, reference_fp8_linear_step


@pytest.fixture(autouse=True)
def fresh_weight_cache():
    fnn_functional.clear_weight_cache()
    yield
    fnn_functional.clear_weight_cache()


def close(x, y, bound=1e-5):
    """calc_diff below `bound`: 1e-5 allows the bf16 rounding of an output (the GEMMs write
    bf16, the reference rounds a float64 product), 1e-10 is for FP32 outputs."""
    return calc_diff(x.detach(), y.detach()) < bound


# ---------------------------------------------------------------------------------------------
# A drop-in for nn.Linear
# ---------------------------------------------------------------------------------------------


def test_constructor_init_and_state_dict(seed):
    torch.manual_seed(seed)
    ref = torch.nn.Linear(128, 64)
    torch.manual_seed(seed)
    lin = fnn.Linear(128, 64)
    assert isinstance(lin, torch.nn.Linear)
    assert torch.equal(lin.weight, ref.weight) and torch.equal(lin.bias, ref.bias)
    assert list(lin.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    other = torch.nn.Linear(128, 64)
    lin.load_state_dict(other.state_dict())
    assert torch.equal(lin.weight, other.weight)
    ref.load_state_dict(lin.state_dict())
    assert fnn.Linear(32, 16, bias=False).bias is None
    lin16 = fnn.Linear(32, 16, dtype=torch.bfloat16, device="cpu")
    assert lin16.weight.dtype == torch.bfloat16 and lin16.weight.device.type == "cpu"
    assert "fp8=True" in repr(lin)


def test_constructor_rejects_unaligned_sizes():
    with pytest.raises(ValueError, match=r"out_features = 100 not a positive multiple of 16"):
        fnn.Linear(128, 100)
    with pytest.raises(ValueError, match=r"in_features = 8 .*multiple of 16"):
        fnn.Linear(8, 32)


@pytest.mark.parametrize("shape", [(37, 128), (2, 45, 128), (128,), (3, 2, 130 - 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_reference_step(generator, shape, dtype, bias):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    lin = fnn.Linear(128, 96, bias=bias, dtype=dtype)
    x = torch.randn(shape, generator=generator).to(dtype).requires_grad_()
    y = lin(x)
    assert y.shape == shape[:-1] + (96,) and y.dtype == dtype
    dy = torch.randn(y.shape, generator=generator).to(dtype)
    y.backward(dy)
    ref = reference_fp8_linear_step(x.detach(), lin.weight, dy, lin.bias)
    assert close(y, ref["out"])
    assert close(x.grad, ref["grad_input"])
    assert x.grad.dtype == dtype and lin.weight.grad.dtype == dtype
    assert close(lin.weight.grad, ref["grad_weight"], 1e-10 if dtype == torch.float32 else 1e-5)
    if bias:
        assert close(lin.bias.grad, ref["grad_bias"])
    # And against plain fp32 autograd: the FP8 error only.
    x32 = x.detach().float().requires_grad_()
    w32 = lin.weight.detach().float().requires_grad_()
    y32 = torch.nn.functional.linear(x32, w32)
    y32.backward(dy.float())
    assert calc_diff(x.grad.float(), x32.grad) < 2e-3
    assert calc_diff(lin.weight.grad.float(), w32.grad) < 2e-3


def test_functional_linear(generator):
    x = torch.randn(20, 64, generator=generator, requires_grad=True)
    w = torch.randn(32, 64, generator=generator, requires_grad=True)
    b = torch.randn(32, generator=generator, requires_grad=True)
    y = fnn.functional.linear(x, w, b)
    dy = torch.randn(20, 32, generator=generator)
    y.backward(dy)
    ref = reference_fp8_linear_step(x.detach(), w, dy, b)
    assert close(y, ref["out"]) and close(x.grad, ref["grad_input"])
    assert close(w.grad, ref["grad_weight"], 1e-10) and close(b.grad, ref["grad_bias"])


def test_grad_accumulates_over_backward_calls(generator):
    lin = fnn.Linear(64, 32)
    refs = []
    for _ in range(2):
        x = torch.randn(40, 64, generator=generator)
        dy = torch.randn(40, 32, generator=generator)
        lin(x).backward(dy)
        refs.append(reference_fp8_linear_step(x, lin.weight, dy)["grad_weight"])
    assert close(lin.weight.grad, refs[0] + refs[1], 1e-10)


def test_main_grad(generator):
    """Megatron's convention: the FP32 wgrad is added into weight.main_grad in place."""
    lin = fnn.Linear(64, 48, dtype=torch.bfloat16)
    start = torch.randn(48, 64, generator=generator)
    lin.weight.main_grad = start.clone()
    main_grad_ptr = lin.weight.main_grad.data_ptr()
    total = start.double()
    for _ in range(2):
        x = torch.randn(33, 64, generator=generator, dtype=torch.bfloat16)
        dy = torch.randn(33, 48, generator=generator, dtype=torch.bfloat16)
        lin(x).backward(dy)
        total = total + reference_fp8_linear_step(x, lin.weight, dy)["grad_weight"].double()
    assert lin.weight.grad is None
    assert lin.weight.main_grad.data_ptr() == main_grad_ptr
    assert lin.weight.main_grad.dtype == torch.float32
    assert close(lin.weight.main_grad, total, 1e-10)
    assert lin.bias.grad is not None   # the bias keeps autograd's .grad

    # With Megatron's grad_added_to_main_grad flag: set, and a zero .grad comes back.
    lin.weight.grad_added_to_main_grad = False
    lin(torch.randn(16, 64, generator=generator, dtype=torch.bfloat16)).sum().backward()
    assert lin.weight.grad_added_to_main_grad is True
    assert lin.weight.grad is not None and (lin.weight.grad == 0).all()


def test_main_grad_errors(generator):
    lin = fnn.Linear(32, 16)
    x = torch.randn(4, 32, generator=generator)
    lin.weight.main_grad = torch.zeros(16, 32, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"weight.main_grad: expected dtype torch.float32"):
        lin(x).sum().backward()
    lin.weight.main_grad = torch.zeros(32, 16)
    with pytest.raises(ValueError, match=r"weight.main_grad: expected shape \(16, 32\)"):
        lin(x).sum().backward()


def test_frozen_inputs_and_no_grad(generator, monkeypatch):
    lin = fnn.Linear(64, 32)
    x = torch.randn(10, 64, generator=generator)             # requires_grad=False
    y = lin(x)
    y.backward(torch.ones_like(y))
    assert x.grad is None and lin.weight.grad is not None

    # A frozen weight: no wgrad, and X^T is never quantized for it.
    calls = []
    original = fnn_functional.quantize_rowwise_and_transposed

    def counting(t, **kwargs):
        calls.append(kwargs)
        return original(t, **kwargs)

    monkeypatch.setattr(fnn_functional, "quantize_rowwise_and_transposed", counting)
    lin.weight.requires_grad_(False)
    lin.bias.requires_grad_(False)
    xg = x.clone().requires_grad_()
    lin(xg).sum().backward()
    assert xg.grad is not None
    assert all(not c.get("transposed", True) for c in calls), calls

    with torch.no_grad():
        lin.weight.requires_grad_(True)
        y = lin(xg)
    assert y.grad_fn is None and not y.requires_grad
    assert close(y, reference_fp8_linear_step(x, lin.weight, torch.ones(10, 32), lin.bias)["out"])


def test_autocast_bf16(generator):
    """Under bf16 autocast the output is bf16 from fp32 parameters and input, as nn.Linear's."""
    lin = fnn.Linear(64, 32)
    ref = torch.nn.Linear(64, 32)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(12, 64, generator=generator, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
        y_ref = ref(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert calc_diff(y.detach().float(), y_ref.detach().float()) < 2e-3
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32


def test_dtype_mismatch_outside_autocast(generator):
    lin = fnn.Linear(32, 16)
    with pytest.raises(RuntimeError, match=r"same dtype"):
        lin(torch.randn(4, 32, generator=generator).bfloat16())


def test_functional_errors():
    with pytest.raises(ValueError, match=r"input: expected last dimension in_features"):
        fnn.functional.linear(torch.randn(4, 32), torch.randn(16, 48))
    with pytest.raises(ValueError, match=r"out_features \(weight.shape\[0\]\).*multiple of 16"):
        fnn.functional.linear(torch.randn(4, 32), torch.randn(20, 32))
    with pytest.raises(ValueError, match=r"bias: expected shape \(16,\)"):
        fnn.functional.linear(torch.randn(4, 32), torch.randn(16, 32), torch.randn(8))
    with pytest.raises(TypeError, match=r"input: expected dtype"):
        fnn.functional.linear(torch.ones(4, 32, dtype=torch.int64), torch.randn(16, 32))


def test_weight_quantized_once_per_update(generator, monkeypatch):
    calls = []
    original = fnn_functional.quantize

    def counting(x, granularity):
        calls.append(granularity)
        return original(x, granularity)

    monkeypatch.setattr(fnn_functional, "quantize", counting)
    lin = fnn.Linear(64, 32)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    x = torch.randn(8, 64, generator=generator)
    for _ in range(3):
        lin(x).sum().backward()
    assert calls == ["128x128"]          # one weight, three micro-batches: one quantization
    opt.step()                            # in-place update: a new version
    y = lin(x)
    assert calls == ["128x128", "128x128"]
    assert close(y, reference_fp8_linear_step(x, lin.weight, torch.ones(8, 32), lin.bias)["out"])
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 64, generator=generator))
    lin(x)
    assert len(calls) == 3


def test_backward_uses_the_forward_weight(generator):
    """An update between forward and backward (e.g. a second micro-batch's optimizer step
    elsewhere) does not change this step's dgrad: it uses the weight the forward saw."""
    lin = fnn.Linear(64, 32)
    x = torch.randn(8, 64, generator=generator, requires_grad=True)
    w_before = lin.weight.detach().clone()
    y = lin(x)
    with torch.no_grad():
        lin.weight.add_(1.0)
    dy = torch.randn(8, 32, generator=generator)
    y.backward(dy)
    assert close(x.grad, reference_fp8_linear_step(x.detach(), w_before, dy)["grad_input"])


def test_zero_tokens():
    lin = fnn.Linear(32, 16)
    x = torch.randn(0, 32, requires_grad=True)
    y = lin(x)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert x.grad.shape == (0, 32)
    assert torch.equal(lin.weight.grad, torch.zeros(16, 32))


# ---------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(64, 128)
        self.odd = torch.nn.Linear(128, 100)
        self.attn = torch.nn.MultiheadAttention(32, 2)
        self.head = torch.nn.Linear(100, 16)
        self.down = torch.nn.Linear(128, 64, bias=False)


def test_convert(generator):
    model = Model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    up_weight = model.up.weight
    report = fnn.convert(model, filter_fn=lambda name, m: name != "down")
    assert report.model is model
    assert report.converted == ["up"]
    assert set(report.skipped) == {"odd", "attn.out_proj", "head", "down"}
    assert "out_features = 100" in report.skipped["odd"]
    assert "in_features = 100" in report.skipped["head"]
    assert "subclass of nn.Linear" in report.skipped["attn.out_proj"]
    assert report.skipped["down"] == "excluded by filter_fn"
    assert type(model.up) is fnn.Linear and type(model.down) is torch.nn.Linear
    assert model.up.weight is up_weight                      # shared, not copied
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert "left alone: odd" in str(report)
    # The converted layer computes the FP8 forward.
    x = torch.randn(8, 64, generator=generator)
    ref = reference_fp8_linear_step(x, model.up.weight, torch.ones(8, 128), model.up.bias)
    assert close(model.up(x), ref["out"])
    # Converting again converts nothing more.
    again = fnn.convert(model)
    assert again.converted == ["down"] and "already a pyfp8gemm.nn.Linear" in again.skipped["up"]


def test_convert_root_linear_and_errors():
    lin = torch.nn.Linear(32, 32)
    report = fnn.convert(lin)
    assert report.converted == [""] and report.model is lin and type(lin) is fnn.Linear
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module"):
        fnn.convert("model")
    with pytest.raises(ValueError, match=r"cannot convert"):
        fnn.Linear.from_linear(torch.nn.Linear(10, 16))


# ---------------------------------------------------------------------------------------------
# A short training run: FP8 vs bf16 (the wiring of the whole step)
# ---------------------------------------------------------------------------------------------


class MLPBlock(torch.nn.Module):
    def __init__(self, d=128, hidden=512, vocab=64):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, hidden)
        self.down = torch.nn.Linear(hidden, d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, x):
        x = x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))
        return self.head(x)


def synthetic_batches(seed, steps, tokens, d=128, vocab=64):
    """Tokens labelled by sampling from a random teacher's softmax: the loss has a floor (the
    labels' entropy), like a language model's."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(d, d, generator=g) / d ** 0.5
    w2 = torch.randn(d, vocab, generator=g) * (2 / d ** 0.5)
    batches = []
    for _ in range(steps):
        x = torch.randn(tokens, d, generator=g)
        probs = torch.softmax(torch.tanh(x @ w1) @ w2, dim=-1)
        batches.append((x, torch.multinomial(probs, 1, generator=g).squeeze(1)))
    return batches


def train(model, batches, device="cpu", lr=2e-3):
    """AdamW steps on the batches under bf16 autocast; the per-step losses (floats)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_fp8_training_tracks_bf16(seed):
    batches = synthetic_batches(seed, 40, 128, d=64)
    torch.manual_seed(seed)
    bf16_model = MLPBlock(d=64, hidden=256)
    fp8_model = copy.deepcopy(bf16_model)
    report = fnn.convert(fp8_model, filter_fn=lambda name, m: name != "head")
    assert report.converted == ["up", "down"]
    bf16_losses = train(bf16_model, batches)
    fp8_losses = train(fp8_model, batches)
    final_bf16 = sum(bf16_losses[-10:]) / 10
    final_fp8 = sum(fp8_losses[-10:]) / 10
    # It learned something: the first step's loss is one noisy batch (seed-dependent), so
    # compare the first ten steps' mean with the last ten's.
    assert final_bf16 < sum(bf16_losses[:10]) / 10 - 0.05
    # DeepSeek-V3's bar for this recipe (here the gap is ~1e-4).
    assert abs(final_fp8 - final_bf16) / final_bf16 < 0.0025


@pytest.mark.parametrize("main_grad", [False, True])
def test_compiled_model_matches_eager(generator, main_grad):
    """torch.compile(fullgraph=True) of a block that uses pyfp8gemm.nn.Linear,
    pyfp8gemm.matmul and an m-grouped GEMM traces with no graph break, and the compiled
    forward and backward (x.grad, and .grad or main_grad) equal eager's bit for bit."""
    import pyfp8gemm

    lin = fnn.Linear(256, 128)
    w2 = torch.randn(64, 128, generator=generator)
    experts = pyfp8gemm.quantize_grouped(torch.randn(2, 64, 128, generator=generator), "128x128")
    m_indices = torch.tensor([0] * 128 + [1] * 128, dtype=torch.int32)
    if main_grad:
        lin.weight.main_grad = torch.zeros(128, 256)

    def block(x):
        h = lin(x)                                                  # (256, 128)
        y = pyfp8gemm.matmul(h.detach(), w2.t())                    # (256, 64), no grad
        d = torch.empty(256, 64, dtype=torch.bfloat16)
        pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous(
            pyfp8gemm.quantize(h.detach(), "1x128"), experts, d, m_indices)
        return h.square().mean() + 0 * (y.float().sum() + d.float().sum()), y, d

    def run(fn):
        x = torch.randn(256, 256, generator=torch.Generator().manual_seed(7), requires_grad=True)
        lin.weight.grad = None
        if main_grad:
            lin.weight.main_grad.zero_()
        loss, y, d = fn(x)
        loss.backward()
        weight_grad = lin.weight.main_grad.clone() if main_grad else lin.weight.grad.clone()
        return loss.detach(), y, d, x.grad, weight_grad

    eager = run(block)
    compiled = run(torch.compile(block, fullgraph=True, backend="aot_eager"))
    for e, c in zip(eager, compiled):
        assert torch.equal(e, c)
    assert (lin.weight.grad is None) == main_grad
