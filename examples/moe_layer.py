"""A whole mixture-of-experts feed-forward layer on pyfp8gemm's grouped FP8 GEMMs.

    route -> quantize -> grouped GEMM (gate and up) -> SiLU-and-mul -> quantize
          -> grouped GEMM (down) -> combine

checked against a plain bf16 torch MoE of the same weights. Both layouts are shown: the
contiguous one (prefill, training: `m_grouped_fp8_gemm_nt_contiguous`) and the masked one
(decode, CUDA graphs: `m_grouped_fp8_gemm_nt_masked`).

    python examples/moe_layer.py                    # tiny sizes, CPU (the reference backend)
    python examples/moe_layer.py --device cuda --tokens 4096 --hidden 7168 --intermediate 2048 \\
        --experts 16 --top-k 4                      # on a Hopper GPU

The layer is DeepSeek-V3's expert FFN: ``y = W2 (silu(W1_gate x) * (W1_up x))`` per expert,
with W1 = [W1_gate; W1_up] stored as one (2I, H) matrix per expert, and the token's output the
router-weighted sum over its k experts.
"""

from __future__ import annotations

import argparse

import torch

import pyfp8gemm
from pyfp8gemm import moe
from pyfp8gemm.host.grouped import (
    m_grouped_fp8_gemm_nt_contiguous,
    m_grouped_fp8_gemm_nt_masked,
    quantize_grouped,
)
from pyfp8gemm.testing import calc_diff


#: calc_diff of the FP8 layer against the bf16 one. One FP8 GEMM lands near 7e-4 against its
#: unquantized product; the layer quantizes four times (x, W1, the activation, W2) and multiplies
#: two erroneous halves (silu(gate) * up), so it lands near 2e-3 (measured 2.0e-3 to 2.1e-3).
TOLERANCE = 5e-3


def route(x: torch.Tensor, router_weight: torch.Tensor, top_k: int):
    """Softmax top-k routing: (topk_ids int32 (T, k), topk_weights float32 (T, k)), the weights
    renormalized over the k chosen experts."""
    probabilities = torch.softmax(x.float() @ router_weight.float().t(), dim=-1)
    weights, ids = probabilities.topk(top_k, dim=-1)
    return ids.to(torch.int32), weights / weights.sum(dim=-1, keepdim=True)


def silu_and_mul(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of h = [gate | up] along the last dimension, in float32, to bf16."""
    gate, up = h.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(torch.bfloat16)


def reference_moe_bf16(x, topk_ids, topk_weights, w1, w2) -> torch.Tensor:
    """The plain bf16 torch MoE: a loop over experts, bf16 matmuls, float32 weighted sum."""
    tokens, hidden = x.shape
    out = torch.zeros(tokens, hidden, dtype=torch.float32, device=x.device)
    for e in range(w1.shape[0]):
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        h = x[token] @ w1[e].t()
        y = silu_and_mul(h) @ w2[e].t()
        out.index_add_(0, token, y.float() * topk_weights[token, slot].unsqueeze(1))
    return out.to(torch.bfloat16)


class FP8MoE:
    """The experts' weights quantized once (128x128 blocks per expert), and the FP8 forward.

    w1: (E, 2I, H) bf16 (gate and up stacked), w2: (E, H, I) bf16.
    """

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor):
        self.num_experts = w1.shape[0]
        self.hidden = w1.shape[2]
        self.intermediate2 = w1.shape[1]
        self.w1 = quantize_grouped(w1, "128x128")
        self.w2 = quantize_grouped(w2, "128x128")

    def forward_contiguous(self, x, topk_ids, topk_weights) -> torch.Tensor:
        """Prefill/training: tokens grouped by expert in one stacked tensor. No host sync (the
        layout is sized by its upper bound, see pyfp8gemm.moe)."""
        layout = moe.contiguous_layout(topk_ids, self.num_experts)
        a = moe.permute_quantized(pyfp8gemm.quantize(x, "1x128"), layout)
        h = torch.empty(layout.num_rows, self.intermediate2, dtype=torch.bfloat16,
                        device=x.device)
        m_grouped_fp8_gemm_nt_contiguous(a, self.w1, h, layout.m_indices,
                                         expected_m=layout.expected_m)
        # Padding rows of h are zero (zero A rows / skipped blocks), and silu(0) * 0 = 0.
        act = pyfp8gemm.quantize(silu_and_mul(h), "1x128")
        y = torch.empty(layout.num_rows, self.hidden, dtype=torch.bfloat16, device=x.device)
        m_grouped_fp8_gemm_nt_contiguous(act, self.w2, y, layout.m_indices,
                                         expected_m=layout.expected_m)
        return moe.combine(y, layout, topk_weights, out_dtype=torch.bfloat16)

    def forward_masked(self, x, topk_ids, topk_weights, max_tokens_per_expert: int):
        """Decode: an (E, M_max) buffer per expert, the counts on the device (CUDA-graph
        friendly). Pairs past M_max per expert are dropped (layout.num_dropped counts them)."""
        layout = moe.masked_layout(topk_ids, self.num_experts, max_tokens_per_expert)
        a = moe.permute_quantized(pyfp8gemm.quantize(x, "1x128"), layout)
        m_max = max_tokens_per_expert
        h = torch.empty(self.num_experts, m_max, self.intermediate2, dtype=torch.bfloat16,
                        device=x.device)
        m_grouped_fp8_gemm_nt_masked(a, self.w1, h, layout.masked_m, layout.expected_m)
        # Rows of h past masked_m are never written (whatever torch.empty left there): they
        # quantize to anything, and neither the next GEMM nor combine reads them.
        act = quantize_grouped(silu_and_mul(h), "1x128")
        y = torch.empty(self.num_experts, m_max, self.hidden, dtype=torch.bfloat16,
                        device=x.device)
        m_grouped_fp8_gemm_nt_masked(act, self.w2, y, layout.masked_m, layout.expected_m)
        return moe.combine(y, layout, topk_weights, out_dtype=torch.bfloat16), layout


def make_layer(tokens, hidden, intermediate, experts, top_k, *, device="cpu", seed=0):
    """Random inputs and weights of a MoE layer: (x, router, w1, w2), bf16, scaled so the
    activations stay O(1)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(torch.bfloat16).to(device)

    x = randn(tokens, hidden)
    router = randn(experts, hidden, scale=hidden ** -0.5)
    w1 = randn(experts, 2 * intermediate, hidden, scale=hidden ** -0.5)
    w2 = randn(experts, hidden, intermediate, scale=intermediate ** -0.5)
    return x, router, w1, w2


def run(tokens=64, hidden=256, intermediate=128, experts=4, top_k=2, *, device="cpu", seed=0):
    """Both FP8 paths against the bf16 reference: a dict of calc_diffs and the outputs."""
    x, router, w1, w2 = make_layer(tokens, hidden, intermediate, experts, top_k,
                                   device=device, seed=seed)
    topk_ids, topk_weights = route(x, router, top_k)
    reference = reference_moe_bf16(x, topk_ids, topk_weights, w1, w2)
    layer = FP8MoE(w1, w2)
    out_contiguous = layer.forward_contiguous(x, topk_ids, topk_weights)
    out_masked, layout = layer.forward_masked(x, topk_ids, topk_weights,
                                              max_tokens_per_expert=tokens)
    return {
        "contiguous_vs_bf16": calc_diff(out_contiguous.float(), reference.float()),
        "masked_vs_bf16": calc_diff(out_masked.float(), reference.float()),
        "contiguous_vs_masked": calc_diff(out_contiguous.float(), out_masked.float()),
        "dropped": int(layout.num_dropped),
        "outputs": (out_contiguous, out_masked, reference),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (reference backend) or cuda (Hopper)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=128)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.tokens, args.hidden, args.intermediate, args.experts, args.top_k,
                 device=args.device, seed=args.seed)
    print(f"MoE layer T={args.tokens} H={args.hidden} I={args.intermediate} E={args.experts} "
          f"k={args.top_k} on {args.device}")
    for key in ("contiguous_vs_bf16", "masked_vs_bf16", "contiguous_vs_masked"):
        print(f"  calc_diff {key:<22} {result[key]:.2e}")
    ok = max(result["contiguous_vs_bf16"], result["masked_vs_bf16"]) < TOLERANCE
    print("  OK" if ok else f"  FAILED: FP8 MoE differs from the bf16 MoE by more than {TOLERANCE}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
