"""examples/moe_layer.py at a tiny size on the CPU (the reference backend): the whole FP8 MoE
layer (route, quantize, grouped GEMM, SiLU-and-mul, quantize, grouped GEMM, combine) in both
layouts against the plain bf16 torch MoE of the same weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pyfp8gemm.testing import calc_diff

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "moe_layer.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("moe_layer_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_moe_layer_matches_bf16_moe(example, seed):
    result = example.run(tokens=48, hidden=256, intermediate=128, experts=4, top_k=2,
                         seed=seed % 1000)
    out_contiguous, out_masked, reference = result["outputs"]
    assert out_contiguous.shape == reference.shape == (48, 256)
    assert not out_contiguous.isnan().any() and not out_masked.isnan().any()
    # FP8 error of the layer (four quantizations): ~2e-3; a wrong layout or combine gives ~1
    assert result["contiguous_vs_bf16"] < example.TOLERANCE
    assert result["masked_vs_bf16"] < example.TOLERANCE
    # same FP8 products through both layouts (the CPU backend computes row by row)
    assert torch.equal(out_contiguous, out_masked)
    assert result["dropped"] == 0


def test_moe_layer_masked_drops_overflow(example):
    """With M_max smaller than the busiest expert's load, pairs are dropped and counted, and
    the tokens that kept all their experts still match the reference."""
    x, router, w1, w2 = example.make_layer(32, 128, 64, 2, 1, seed=1)
    ids, weights = example.route(x, router, 1)
    layer = example.FP8MoE(w1, w2)
    out, layout = layer.forward_masked(x, ids, weights, max_tokens_per_expert=4)
    counts = torch.bincount(ids.reshape(-1).long(), minlength=2)
    assert int(layout.num_dropped) == int((counts - 4).clamp(min=0).sum()) > 0
    kept = (layout.row_of_slot >= 0).all(dim=1)
    assert torch.equal(out[~kept], torch.zeros_like(out[~kept]))   # nothing left for them
    reference = example.reference_moe_bf16(x, ids, weights, w1, w2)
    assert calc_diff(out[kept].float(), reference[kept].float()) < example.TOLERANCE


def test_moe_layer_main(example, capsys):
    assert example.main(["--tokens", "16", "--hidden", "128", "--intermediate", "64"]) == 0
    assert "OK" in capsys.readouterr().out
