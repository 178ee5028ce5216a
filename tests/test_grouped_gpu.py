"""GPU tests of the m-grouped GEMMs (need a Hopper GPU; skipped elsewhere).

DeepGEMM's own test shapes (../shared/DEEPGEMM_API.md, section 4), plus: odd shapes, empty
groups, padding blocks, out-of-range group ids, NaN poisoning of d (every row that must be
written is written, every row that must stay untouched stays NaN), bitwise determinism, a
non-default stream, CUDA-graph replay with changed masked_m, no host synchronization, and the
CPU backend against the GPU kernels.

Checks: against the float64 reference of the FP8 operands (pyfp8gemm.testing), calc_diff
< 1e-5 (bf16 output rounding only, ~1e-6); against the fp32 product of the unquantized inputs
< 1e-3 (DeepGEMM's threshold).
"""

from __future__ import annotations

import random

import pytest
import torch

import pyfp8gemm
from pyfp8gemm.host import grouped
from pyfp8gemm.host.grouped import (
    m_grouped_fp8_gemm_nt_contiguous,
    m_grouped_fp8_gemm_nt_masked,
    quantize_grouped,
)
from pyfp8gemm.testing import (
    calc_diff,
    fp32_product,
    reference_m_grouped_contiguous,
    reference_m_grouped_masked,
)

pytestmark = pytest.mark.gpu

EXACT = 1e-5        # against the float64 product of the FP8 operands (bf16 rounding only)
FP8_ERROR = 1e-3    # against the fp32 product of the unquantized inputs

NK_SHAPES = [(6144, 7168), (7168, 3072), (4096, 4096), (4096, 2048)]
CONTIGUOUS_GROUPS = [(4, 8192), (8, 4096)]
MASKED_GROUPS = [(32, 192), (6, 1024), (32, 20), (6, 20)]


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _nan(*shape) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=torch.bfloat16, device="cuda")


def _randn(generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, device="cuda", dtype=torch.bfloat16)


def make_contiguous(seed, group_rows, n, k, alignment, *, pad_value=0.0):
    """DeepGEMM's layout: group g's rows, then -1 rows to the alignment, A's padding rows set to
    `pad_value` (DeepGEMM zeroes them). Returns (a, b, m_indices, psum, x, w)."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    m_sum = sum(_align(m, alignment) for m in group_rows)
    x = _randn(generator, m_sum, k)
    ids = torch.full((m_sum,), -1, dtype=torch.int32)
    psum, start = [], 0
    for g, rows in enumerate(group_rows):
        ids[start:start + rows] = g
        x[start + rows:start + _align(rows, alignment)] = pad_value
        psum.append(start + rows)
        start += _align(rows, alignment)
    w = _randn(generator, len(group_rows), n, k)
    a = pyfp8gemm.quantize(x, "1x128")
    b = quantize_grouped(w, "128x128")
    return (a, b, ids.cuda(), torch.tensor(psum, dtype=torch.int32, device="cuda"), x, w)


def fp32_contiguous(x, w, m_indices):
    """The unquantized product per row (zeros for -1 rows), fp32, no TF32."""
    out = torch.zeros(x.shape[0], w.shape[1], device="cuda")
    ids = m_indices.long()
    for g in range(w.shape[0]):
        rows = (ids == g).nonzero().squeeze(1)
        if rows.numel():
            out[rows] = fp32_product(x[rows], w[g])
    return out


def make_masked(seed, groups, m_max, n, k):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    x = _randn(generator, groups, m_max, k)
    w = _randn(generator, groups, n, k)
    return quantize_grouped(x, "1x128"), quantize_grouped(w, "128x128"), x, w


def check_masked(d, a, b, masked_m, x, w):
    """Rows below masked_m[g] match the references; rows at or past it are still NaN."""
    ref = reference_m_grouped_masked(a, b, masked_m)
    for g, rows in enumerate(masked_m.tolist()):
        rows = min(max(rows, 0), d.shape[1])
        assert not d[g, :rows].isnan().any(), f"group {g}: a row below masked_m not written"
        assert d[g, rows:].isnan().all(), f"group {g}: a row at or past masked_m was written"
        if rows:
            assert calc_diff(d[g, :rows].float(), ref[g, :rows]) < EXACT
            assert calc_diff(d[g, :rows].float(), fp32_product(x[g, :rows], w[g])) < FP8_ERROR


# ---------------------------------------------------------------------------------------------
# DeepGEMM's shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", NK_SHAPES)
@pytest.mark.parametrize("groups,expected_m", CONTIGUOUS_GROUPS)
@pytest.mark.parametrize("use_psum_layout", [False, True])
def test_contiguous_deepgemm_shapes(groups, expected_m, n, k, use_psum_layout, seed):
    rng = random.Random(seed)
    group_rows = [int(expected_m * rng.uniform(0.7, 1.3)) for _ in range(groups)]
    a, b, m_indices, psum, x, w = make_contiguous(rng.randrange(2**31), group_rows, n, k, 128)
    layout = psum if use_psum_layout else m_indices
    d = _nan(m_indices.numel(), n)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, layout, use_psum_layout=use_psum_layout,
                                     expected_m=expected_m)
    ref = reference_m_grouped_contiguous(a, b, layout, use_psum_layout=use_psum_layout)
    if use_psum_layout:   # DeepGEMM compares each group's rows only (gap rows: see the docs)
        real = m_indices >= 0
        assert not d[real].isnan().any()
        assert calc_diff(d[real].float(), ref[real]) < EXACT
    else:
        assert not d.isnan().any()
        assert calc_diff(d.float(), ref) < EXACT
        assert torch.equal(d[m_indices < 0], torch.zeros_like(d[m_indices < 0]))
    real = m_indices >= 0
    assert calc_diff(d[real].float(), fp32_contiguous(x, w, m_indices)[real]) < FP8_ERROR


@pytest.mark.parametrize("n,k", NK_SHAPES)
@pytest.mark.parametrize("groups,expected_m", MASKED_GROUPS)
def test_masked_deepgemm_shapes(groups, expected_m, n, k, seed):
    rng = random.Random(seed)
    m_max = _align(int(expected_m * 1.3) + 1, 64)
    a, b, x, w = make_masked(rng.randrange(2**31), groups, m_max, n, k)
    for trial in range(2):
        masked_m = torch.tensor([int(expected_m * rng.uniform(0.7, 1.3)) for _ in range(groups)],
                                dtype=torch.int32, device="cuda")
        d = _nan(groups, m_max, n)
        m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, int(expected_m * 1.2))
        check_masked(d, a, b, masked_m, x, w)


# ---------------------------------------------------------------------------------------------
# Odd shapes, empty groups, padding blocks, out-of-range ids, alignment 64
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alignment", [128, 64])
@pytest.mark.parametrize("n,k", [(200, 272), (8, 16), (392, 1040), (2056, 7168)])
def test_contiguous_odd_shapes_empty_groups(alignment, n, k):
    grouped.set_mk_alignment_for_contiguous_layout(alignment)
    group_rows = [1, 0, 77, alignment, 0, 300, 3]
    a, b, m_indices, psum, x, w = make_contiguous(n * 31 + k, group_rows, n, k, alignment)
    for use_psum_layout, layout in ((False, m_indices), (True, psum)):
        d = _nan(m_indices.numel(), n)
        m_grouped_fp8_gemm_nt_contiguous(a, b, d, layout, use_psum_layout=use_psum_layout)
        assert not d.isnan().any()            # every row written (zeros or products)
        ref = reference_m_grouped_contiguous(a, b, layout, use_psum_layout=use_psum_layout)
        assert calc_diff(d.float(), ref) < EXACT


def test_contiguous_padding_blocks_are_skipped_and_zero():
    """Blocks whose first id is -1, >= G or < -1 are written as zeros, even where A holds
    (non-zero, even NaN) data: nothing of A is read for them."""
    n, k = 256, 512
    a, b, m_indices, _, x, w = make_contiguous(5, [128, 200, 64], n, k, 128)
    extra = 4 * 128
    m_indices = torch.cat([m_indices, torch.tensor([-1] * 128 + [3] * 128 + [99] * 128
                                                   + [-7] * 128, dtype=torch.int32,
                                                   device="cuda")])
    x = torch.cat([x, torch.full((extra, k), float("nan"), dtype=torch.bfloat16, device="cuda")])
    a = pyfp8gemm.quantize(x, "1x128")
    d = _nan(m_indices.numel(), n)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices)
    tail = d[-extra:]
    assert torch.equal(tail, torch.zeros_like(tail))
    head = d[:-extra]
    ref = reference_m_grouped_contiguous(a, b, m_indices)[:-extra]
    assert calc_diff(head.float(), ref) < EXACT
    # an all-padding layout: everything zero
    d = _nan(m_indices.numel(), n)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, torch.full_like(m_indices, -1))
    assert torch.equal(d, torch.zeros_like(d))


@pytest.mark.parametrize("m_max", [1, 7, 64, 65, 300])
@pytest.mark.parametrize("n,k", [(200, 272), (4096, 7168), (24, 16)])
def test_masked_odd_shapes_and_empty_groups(m_max, n, k):
    groups = 5
    a, b, x, w = make_masked(m_max * 13 + n + k, groups, m_max, n, k)
    counts = [0, m_max, min(3, m_max), m_max // 2, 10 * m_max]   # 10 * m_max: clamped to m_max
    masked_m = torch.tensor(counts, dtype=torch.int32, device="cuda")
    d = _nan(groups, m_max, n)
    m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, max(1, m_max // 2))
    check_masked(d, a, b, masked_m, x, w)
    # every group empty: nothing is written
    d = _nan(groups, m_max, n)
    m_grouped_fp8_gemm_nt_masked(a, b, d, torch.zeros_like(masked_m), 1)
    assert d.isnan().all()


def test_expected_m_is_only_a_hint():
    a, b, x, w = make_masked(11, 4, 256, 512, 1024)
    masked_m = torch.tensor([200, 5, 0, 256], dtype=torch.int32, device="cuda")
    for expected_m in (1, 16, 200, 4096):
        d = _nan(4, 256, 512)
        m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m)
        check_masked(d, a, b, masked_m, x, w)
    a, b, m_indices, _, x, w = make_contiguous(12, [300, 10, 0, 128], 512, 1024, 128)
    for expected_m in (1, 128, 8192):
        d = _nan(m_indices.numel(), 512)
        m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices, expected_m=expected_m)
        assert calc_diff(d.float(), reference_m_grouped_contiguous(a, b, m_indices)) < EXACT


# ---------------------------------------------------------------------------------------------
# Determinism, streams, CUDA graphs, no host synchronization
# ---------------------------------------------------------------------------------------------


def test_bitwise_deterministic():
    a, b, m_indices, _, _, _ = make_contiguous(21, [1000, 37, 2000, 0], 2048, 7168, 128)
    first = _nan(m_indices.numel(), 2048)
    m_grouped_fp8_gemm_nt_contiguous(a, b, first, m_indices)
    for _ in range(5):
        again = _nan(m_indices.numel(), 2048)
        m_grouped_fp8_gemm_nt_contiguous(a, b, again, m_indices)
        assert torch.equal(first, again)
    am, bm, _, _ = make_masked(22, 8, 128, 4096, 7168)
    masked_m = torch.tensor([1, 128, 64, 0, 100, 3, 127, 50], dtype=torch.int32, device="cuda")
    first = _nan(8, 128, 4096)
    m_grouped_fp8_gemm_nt_masked(am, bm, first, masked_m, 64)
    for _ in range(5):
        again = _nan(8, 128, 4096)
        m_grouped_fp8_gemm_nt_masked(am, bm, again, masked_m, 64)
        assert torch.equal(first.nan_to_num(7.0), again.nan_to_num(7.0))


def test_non_default_stream():
    a, b, m_indices, psum, _, _ = make_contiguous(31, [500, 129, 64], 1024, 2048, 128)
    am, bm, _, _ = make_masked(32, 4, 96, 1024, 2048)
    masked_m = torch.tensor([96, 0, 17, 50], dtype=torch.int32, device="cuda")
    expected_c = _nan(m_indices.numel(), 1024)
    m_grouped_fp8_gemm_nt_contiguous(a, b, expected_c, psum, use_psum_layout=True)
    expected_m = _nan(4, 96, 1024)
    m_grouped_fp8_gemm_nt_masked(am, bm, expected_m, masked_m, 32)
    torch.cuda.synchronize()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        d_c = _nan(m_indices.numel(), 1024)
        m_grouped_fp8_gemm_nt_contiguous(a, b, d_c, psum, use_psum_layout=True)
        d_m = _nan(4, 96, 1024)
        m_grouped_fp8_gemm_nt_masked(am, bm, d_m, masked_m, 32)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(d_c, expected_c)
    assert torch.equal(d_m.nan_to_num(7.0), expected_m.nan_to_num(7.0))


def test_no_host_synchronization():
    """Neither GEMM (nor the PSUM conversion) synchronizes: torch's sync debug mode raises on
    any synchronizing torch call."""
    a, b, m_indices, psum, _, _ = make_contiguous(41, [300, 20], 512, 1024, 128)
    am, bm, _, _ = make_masked(42, 3, 64, 512, 1024)
    masked_m = torch.tensor([64, 1, 0], dtype=torch.int32, device="cuda")
    d = _nan(m_indices.numel(), 512)
    dm = _nan(3, 64, 512)
    # first calls compile and load the kernels
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, psum, use_psum_layout=True)
    m_grouped_fp8_gemm_nt_masked(am, bm, dm, masked_m, 32)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices)
        m_grouped_fp8_gemm_nt_contiguous(a, b, d, psum, use_psum_layout=True)
        m_grouped_fp8_gemm_nt_masked(am, bm, dm, masked_m, 32)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()


def test_cuda_graph_replay_with_changed_masked_m():
    groups, m_max, n, k = 6, 128, 1024, 2048
    a, b, x, w = make_masked(51, groups, m_max, n, k)
    masked_m = torch.tensor([10, 0, 128, 64, 1, 77], dtype=torch.int32, device="cuda")
    d = _nan(groups, m_max, n)
    m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, 48)    # warm-up: compile and load
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph):
            m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, 48)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()

    for counts in ([10, 0, 128, 64, 1, 77], [128] * 6, [0] * 6, [5, 127, 0, 1, 128, 33],
                   [200, -4, 64, 64, 0, 2]):
        masked_m.copy_(torch.tensor(counts, dtype=torch.int32))
        d.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        check_masked(d, a, b, masked_m, x, w)


def test_cuda_graph_contiguous_psum():
    a, b, m_indices, psum, _, _ = make_contiguous(61, [300, 0, 129, 64], 512, 1024, 128)
    d = _nan(m_indices.numel(), 512)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, psum, use_psum_layout=True)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph):
            m_grouped_fp8_gemm_nt_contiguous(a, b, d, psum, use_psum_layout=True)
    torch.cuda.current_stream().wait_stream(stream)
    # another grouping of the same rows, replayed
    new_psum = [100, 228, 512, 640]
    psum.copy_(torch.tensor(new_psum, dtype=torch.int32))
    d.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    ref = reference_m_grouped_contiguous(a, b, psum, use_psum_layout=True)
    assert not d.isnan().any()
    assert calc_diff(d.float(), ref) < EXACT


# ---------------------------------------------------------------------------------------------
# The CPU backend agrees with the GPU kernels
# ---------------------------------------------------------------------------------------------


def test_cpu_backend_agrees_with_gpu():
    a, b, m_indices, psum, _, _ = make_contiguous(71, [130, 0, 60, 128], 256, 1024, 128)
    d = _nan(m_indices.numel(), 256)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices)
    d_cpu = torch.full(d.shape, float("nan"), dtype=torch.bfloat16)
    m_grouped_fp8_gemm_nt_contiguous(a.cpu(), (b[0].cpu(), b[1].cpu()), d_cpu, m_indices.cpu())
    assert calc_diff(d.cpu().float(), d_cpu.float()) < EXACT

    am, bm, _, _ = make_masked(72, 4, 70, 256, 1024)
    masked_m = torch.tensor([70, 0, 3, 41], dtype=torch.int32, device="cuda")
    dm = _nan(4, 70, 256)
    m_grouped_fp8_gemm_nt_masked(am, bm, dm, masked_m, 32)
    dm_cpu = torch.full(dm.shape, float("nan"), dtype=torch.bfloat16)
    m_grouped_fp8_gemm_nt_masked((am[0].cpu(), am[1].cpu()), (bm[0].cpu(), bm[1].cpu()), dm_cpu,
                                 masked_m.cpu(), 32)
    assert torch.equal(dm.cpu().isnan(), dm_cpu.isnan())
    written = ~dm_cpu.isnan()
    assert calc_diff(dm.cpu()[written].float(), dm_cpu[written].float()) < EXACT


def test_cuda_tensors_never_fall_back_to_cpu():
    """A CUDA operand with a CPU masked_m is an error, not a silent CPU run."""
    am, bm, _, _ = make_masked(81, 2, 8, 16, 128)
    with pytest.raises(ValueError, match="masked_m: expected the same device"):
        m_grouped_fp8_gemm_nt_masked(am, bm, _nan(2, 8, 16),
                                     torch.tensor([1, 2], dtype=torch.int32), 4)


def test_moe_example_on_gpu():
    """examples/moe_layer.py on the GPU at a small size: both layouts against the bf16 MoE."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "moe_layer.py"
    spec = importlib.util.spec_from_file_location("moe_layer_example_gpu", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.run(tokens=512, hidden=1024, intermediate=512, experts=8, top_k=2,
                         device="cuda")
    assert result["contiguous_vs_bf16"] < example.TOLERANCE
    assert result["masked_vs_bf16"] < example.TOLERANCE
    # the same FP8 products through two kernels; bf16 rounding of h may differ in a last bit
    assert result["contiguous_vs_masked"] < 1e-4


@pytest.mark.parametrize("block_n", [128, 192])
def test_contiguous_in_a_cluster_sharing_b(monkeypatch, block_n):
    """The contiguous GEMM in 2-CTA clusters sharing B (DeepGEMM's pairing, the heuristic's pick
    for 128-row blocks; forced here, against no cluster): M blocks 2u, 2u + 1 share a B tile
    where they are one group's or one is padding (whose CTA takes the slots' turns and stores
    zeros, its A rows NaN here), each CTA loads its own where they are two groups', an odd
    block count's last block pairs with one past M. Same bits as without a cluster; padding rows zero."""
    from pyfp8gemm.host import launch, launchers
    from pyfp8gemm.host.heuristics import make_config

    n, k = 768, 1024
    a, b, m_indices, psum, x, w = make_contiguous(9, [1, 0, 77, 128, 0, 300, 3, 129], n, k, 128)
    # 9 blocks, then 3 of padding (a pair of them: both padding) and one of group 5 (13 blocks:
    # the last one's partner lies past M)
    extra = 4 * 128
    m_indices = torch.cat([m_indices, torch.tensor([-1] * 384 + [5] * 128, dtype=torch.int32,
                                                   device="cuda")])
    x = torch.cat([x, torch.full((384, k), float("nan"), dtype=torch.bfloat16, device="cuda"),
                   torch.randn(128, k, dtype=torch.bfloat16, device="cuda")])
    a = pyfp8gemm.quantize(x, "1x128")
    assert (m_indices.numel() // 128) % 2 == 1
    outs = []
    for multicast in ("b", "none"):
        cfg = make_config(128, block_n, multicast, schedule="m_grouped_contiguous")

        def forced(a_data, a_scale, b_data, b_scale, d, m_indices, expected_m, alignment,
                   cfg=cfg):
            launch.launch_grouped("m_grouped_contiguous", a_data, a_scale, b_data, b_scale, d,
                                  m_indices, b_data.shape[0], expected_m, alignment, config=cfg)

        monkeypatch.setattr(launchers, "m_grouped_contiguous", forced)
        outs.append(_nan(m_indices.numel(), n))
        m_grouped_fp8_gemm_nt_contiguous(a, b, outs[-1], m_indices)
    torch.cuda.synchronize()
    d, plain = outs
    assert not d.isnan().any()
    assert torch.equal(d, plain)
    assert torch.equal(d[-extra:-128], torch.zeros_like(d[-extra:-128]))
    ref = reference_m_grouped_contiguous(a, b, m_indices)
    assert calc_diff(d.float(), ref) < EXACT


@pytest.mark.parametrize("block_n, n", [(128, 768), (192, 768), (192, 5 * 192), (128, 5 * 128)])
def test_masked_in_a_cluster_sharing_b(monkeypatch, block_n, n):
    """The masked GEMM in 2-CTA clusters sharing B (DeepGEMM's choice, the heuristic's past 128
    rows a group at K >= 3072; forced here, against no cluster): a group's M blocks in pairs,
    an odd count's last block as two weight tiles at a time, each CTA loading its own B (with
    an odd tile count, the last tile twice). Same bits as without a cluster; rows past
    masked_m untouched."""
    from pyfp8gemm.host import launch, launchers
    from pyfp8gemm.host.heuristics import make_config

    groups, m_max, k = 6, 300, 1024
    a, b, x, w = make_masked(5, groups, m_max, n, k)
    masked_m = torch.tensor([0, 300, 129, 128, 1, 257], dtype=torch.int32, device="cuda")
    outs = []
    for multicast in ("b", "none"):
        cfg = make_config(128, block_n, multicast, schedule="m_grouped_masked")

        def forced(a_data, a_scale, b_data, b_scale, d, masked_m, expected_m, cfg=cfg):
            launch.launch_grouped("m_grouped_masked", a_data, a_scale, b_data, b_scale, d,
                                  masked_m, b_data.shape[0], expected_m, config=cfg)

        monkeypatch.setattr(launchers, "m_grouped_masked", forced)
        outs.append(_nan(groups, m_max, n))
        m_grouped_fp8_gemm_nt_masked(a, b, outs[-1], masked_m, 192)
    torch.cuda.synchronize()
    d, plain = outs
    check_masked(d, a, b, masked_m, x, w)
    assert torch.equal(d.isnan(), plain.isnan())
    assert torch.equal(d.nan_to_num(), plain.nan_to_num())


@pytest.mark.parametrize("block_n", [8, 16, 32])
def test_masked_swap_ab(monkeypatch, block_n):
    """The masked GEMM swapped (decode: a few tokens per expert fill the wgmma's N side):
    forced, on groups of 0 to 40 rows (past BLOCK_N: several token blocks) and N with a weight
    tile tail; rows past masked_m untouched."""
    from pyfp8gemm.host import launch, launchers
    from pyfp8gemm.host.heuristics import make_config

    groups, m_max, n, k = 7, 40, 1096, 1600
    a, b, x, w = make_masked(11, groups, m_max, n, k)
    masked_m = torch.tensor([0, 1, 40, block_n, block_n + 1, 7, 0], dtype=torch.int32,
                            device="cuda")
    cfg = make_config(64, block_n, schedule="m_grouped_masked", swap_ab=True)

    def forced(a_data, a_scale, b_data, b_scale, d, masked_m, expected_m):
        launch.launch_grouped("m_grouped_masked", a_data, a_scale, b_data, b_scale, d,
                              masked_m, b_data.shape[0], expected_m, config=cfg)

    monkeypatch.setattr(launchers, "m_grouped_masked", forced)
    d = _nan(groups, m_max, n)
    m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, 16)
    torch.cuda.synchronize()
    check_masked(d, a, b, masked_m, x, w)


# ---------------------------------------------------------------------------------------------
# Kernels compiled for their shape (the default outside the tests: GemmConfig.compiled_shape)
# ---------------------------------------------------------------------------------------------


def _shape_compiled_and_generic(key):
    """The heuristic's pick for a launch (its launch.grouped_key), compiled for its shape and
    not."""
    from pyfp8gemm.host import heuristics, launch

    num_sms = launch.get_num_sms(key.device)
    generic = heuristics.choose_m_grouped(key.problem, num_sms)
    return heuristics.for_shape(generic, key.problem, num_sms), generic


@pytest.mark.parametrize("groups, expected_m, n, k", [
    (6, 1024, 4096, 2048), (32, 192, 4096, 2048), (6, 1024, 6144, 7168), (32, 20, 7168, 3072),
    (5, 150, 392, 1040)])
def test_masked_shape_compiled_kernel_matches_the_generic_one(monkeypatch, groups, expected_m,
                                                              n, k):
    """The masked GEMM compiled for its (N, groups, grid) gives the generic kernel's bits, on
    DeepGEMM's shapes and an odd one, with empty groups, a count past M_max and one row."""
    from pyfp8gemm.host import launch, launchers

    rng = random.Random(n * 7 + groups)
    m_max = _align(int(expected_m * 1.3) + 1, 64)
    a, b, x, w = make_masked(rng.randrange(2**31), groups, m_max, n, k)
    counts = [int(expected_m * rng.uniform(0.7, 1.3)) for _ in range(groups)]
    counts[1], counts[2], counts[-1] = 0, 1, 5 * m_max
    masked_m = torch.tensor(counts, dtype=torch.int32, device="cuda")
    outs, picked = [], []
    for which in (0, 1):
        def forced(a_data, a_scale, b_data, b_scale, d, masked_m, expected_m, which=which):
            args = ("m_grouped_masked", a_data, a_scale, b_data, b_scale, d, masked_m,
                    b_data.shape[0], expected_m)
            choice = _shape_compiled_and_generic(launch.grouped_key(*args))[which]
            picked.append(choice.config)
            launch.launch_grouped(*args, config=choice)

        monkeypatch.setattr(launchers, "m_grouped_masked", forced)
        outs.append(_nan(groups, m_max, n))
        m_grouped_fp8_gemm_nt_masked(a, b, outs[-1], masked_m, int(expected_m * 1.2))
    torch.cuda.synchronize()
    assert picked[0].compiled_shape[:2] == (n, groups) and picked[0].compiled_shape[2] > 0
    assert picked[1].compiled_shape == ()
    d, generic = outs
    check_masked(d, a, b, masked_m, x, w)
    assert torch.equal(d.isnan(), generic.isnan())
    assert torch.equal(d.nan_to_num(), generic.nan_to_num())


@pytest.mark.parametrize("groups, expected_m, n, k", [
    (8, 4096, 4096, 2048), (4, 8192, 6144, 7168), (7, 150, 392, 1040)])
def test_contiguous_shape_compiled_kernel_matches_the_generic_one(monkeypatch, groups,
                                                                  expected_m, n, k):
    """The contiguous GEMM compiled for its (N, groups) gives the generic kernel's bits, with
    an empty group and padding blocks (zeros)."""
    from pyfp8gemm.host import launch, launchers

    rng = random.Random(n * 5 + groups)
    group_rows = [int(expected_m * rng.uniform(0.7, 1.3)) for _ in range(groups)]
    group_rows[1] = 0
    a, b, m_indices, _, x, w = make_contiguous(rng.randrange(2**31), group_rows, n, k, 128)
    outs, picked = [], []
    for which in (0, 1):
        def forced(a_data, a_scale, b_data, b_scale, d, m_indices, expected_m, alignment,
                   which=which):
            args = ("m_grouped_contiguous", a_data, a_scale, b_data, b_scale, d, m_indices,
                    b_data.shape[0], expected_m, alignment)
            choice = _shape_compiled_and_generic(launch.grouped_key(*args))[which]
            picked.append(choice.config)
            launch.launch_grouped(*args, config=choice)

        monkeypatch.setattr(launchers, "m_grouped_contiguous", forced)
        outs.append(_nan(m_indices.numel(), n))
        m_grouped_fp8_gemm_nt_contiguous(a, b, outs[-1], m_indices, expected_m=expected_m)
    torch.cuda.synchronize()
    assert picked[0].compiled_shape == (n, groups, 0) and picked[1].compiled_shape == ()
    d, generic = outs
    assert not d.isnan().any()
    assert torch.equal(d, generic)
    assert torch.equal(d[m_indices < 0], torch.zeros_like(d[m_indices < 0]))
    assert calc_diff(d.float(), reference_m_grouped_contiguous(a, b, m_indices)) < EXACT
    real = m_indices >= 0
    assert calc_diff(d[real].float(), fp32_contiguous(x, w, m_indices)[real]) < FP8_ERROR
