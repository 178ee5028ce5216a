"""One small GEMM of each kernel family, for compute-sanitizer (memcheck, racecheck):

    compute-sanitizer --tool memcheck --report-api-errors no python3 scripts/sanitize_small.py
    compute-sanitizer --tool racecheck --report-api-errors no python3 scripts/sanitize_small.py

Dense (one tile with split-K, one with a cluster, 32-row A tiles, swap-AB alone and split),
m-grouped contiguous with a padding block, m-grouped masked with an empty group, a partial block, a warpgroup past its rows and a whole
tile (TMA store), 1D1D with accumulation, k-grouped with an empty group; on a GPU also the
forced variants (1D1D "tma" epilogue at 128 / 152 / 136 and clusters, contiguous and masked in
clusters sharing B, masked swap-AB); each checked against its reference (calc_diff printed)."""
import torch

import pyfp8gemm
from pyfp8gemm.testing import (
    calc_diff, reference_gemm, reference_gemm_1d1d, reference_k_grouped,
    reference_m_grouped_contiguous, reference_m_grouped_masked,
)

torch.manual_seed(0)
dev = "cuda" if torch.cuda.is_available() else "cpu"   # CPU: the reference backend


def randn(*shape):
    return torch.randn(*shape, device=dev, dtype=torch.bfloat16)


def report(name, out, ref):
    print(f"{name:28} calc_diff {calc_diff(out.float(), ref.float()):.2e}", flush=True)


a, b = pyfp8gemm.quantize(randn(64, 1024), "1x128"), pyfp8gemm.quantize(randn(256, 1024), "128x128")
out = torch.empty(64, 256, device=dev, dtype=torch.bfloat16)
pyfp8gemm.fp8_gemm_nt(a, b, out)
report("dense (split-K)", out, reference_gemm(a, b))
a, b = pyfp8gemm.quantize(randn(600, 512), "1x128"), pyfp8gemm.quantize(randn(512, 512), "128x128")
out = torch.empty(600, 512, device=dev, dtype=torch.bfloat16)
pyfp8gemm.fp8_gemm_nt(a, b, out)
report("dense", out, reference_gemm(a, b))
a, b = pyfp8gemm.quantize(randn(20, 640), "1x128"), pyfp8gemm.quantize(randn(1000, 640), "128x128")
out = torch.empty(20, 1000, device=dev, dtype=torch.bfloat16)
pyfp8gemm.fp8_gemm_nt(a, b, out)               # 32-row A tiles (M <= 32), N and K tails
report("dense, 32-row tiles", out, reference_gemm(a, b))
a, b = pyfp8gemm.quantize(randn(5, 640), "1x128"), pyfp8gemm.quantize(randn(1000, 640), "128x128")
out = torch.empty(5, 1000, device=dev, dtype=torch.bfloat16)
pyfp8gemm.fp8_gemm_nt(a, b, out)               # swap-AB (M <= 16), N and K tails
report("dense, swap-AB", out, reference_gemm(a, b))
a, b = pyfp8gemm.quantize(randn(3, 6144), "1x128"), pyfp8gemm.quantize(randn(256, 6144), "128x128")
out = torch.empty(3, 256, device=dev, dtype=torch.bfloat16)
pyfp8gemm.fp8_gemm_nt(a, b, out)               # swap-AB, 4 weight tiles split 4 ways
report("dense, swap-AB split-K", out, reference_gemm(a, b))

groups, n, k = 3, 256, 512
ids = torch.tensor([0] * 128 + [-1] * 128 + [2] * 256, device=dev, dtype=torch.int32)
a = pyfp8gemm.quantize(randn(ids.numel(), k), "1x128")
b = pyfp8gemm.quantize_grouped(randn(groups, n, k), "128x128")
d = torch.empty(ids.numel(), n, device=dev, dtype=torch.bfloat16)
pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous(a, b, d, ids)
report("m-grouped contiguous", d, reference_m_grouped_contiguous(a, b, ids))

m_max = 200
masked_m = torch.tensor([40, 0, 200], device=dev, dtype=torch.int32)
a = pyfp8gemm.quantize_grouped(randn(groups, m_max, k), "1x128")
d = torch.full((groups, m_max, n), float("nan"), device=dev, dtype=torch.bfloat16)
pyfp8gemm.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, 100)
ref = reference_m_grouped_masked(a, b, masked_m)
valid = torch.cat([d[0, :40], d[2]]).float()
report("m-grouped masked", valid, torch.cat([ref[0, :40], ref[2]]))

x, y = randn(96, 384), randn(136, 384)
a1, b1 = pyfp8gemm.quantize(x, "1x128"), pyfp8gemm.quantize(y, "1x128")
d = torch.randn(96, 136, device=dev)
c = d.clone()
pyfp8gemm.fp8_gemm_nt(a1, b1, d, c=d)
report("1D1D accumulate", d, reference_gemm_1d1d(a1, b1, c))

ks, kg_m, kg_n = [256, 0, 128], 128, 64
xa, xb = randn(kg_m, sum(ks)), randn(kg_n, sum(ks))
qa, qb = pyfp8gemm.quantize(xa, "1x128"), pyfp8gemm.quantize(xb, "1x128")
flat_a = torch.cat([qa.data[:, s:s + kk].reshape(-1) for s, kk in zip([0, 256, 256], ks)])
flat_b = torch.cat([qb.data[:, s:s + kk].reshape(-1) for s, kk in zip([0, 256, 256], ks)])
d = torch.zeros(len(ks), kg_m, kg_n, device=dev)
ks_tensor = torch.tensor(ks, device=dev, dtype=torch.int32)
pyfp8gemm.k_grouped_fp8_gemm_nt_contiguous((flat_a, qa.scale), (flat_b, qb.scale), d, ks,
                                            ks_tensor, d)
report("k-grouped", d, reference_k_grouped((flat_a, qa.scale), (flat_b, qb.scale), ks))
if dev == "cuda":
    from pyfp8gemm.host import launch, launchers
    from pyfp8gemm.host.heuristics import make_config

    for epilogue, mc, block_n in (("tma", "none", 128), ("tma", "b", 128), ("direct", "a", 128),
                                  ("tma", "none", 152), ("tma", "none", 136)):
        cfg = make_config(128, block_n, mc, scaling="1d1d", accumulate=True, epilogue=epilogue)
        n1 = 256 if block_n == 128 else 300          # 152 / 136: a partial last N tile
        x, y = randn(256, 384), randn(n1, 384)
        a1, b1 = pyfp8gemm.quantize(x, "1x128"), pyfp8gemm.quantize(y, "1x128")
        d = torch.randn(256, n1, device=dev)
        c = d.clone()
        launch.launch_1d1d(a1.data, a1.scale, b1.data, b1.scale, d, d, config=cfg)
        report(f"1D1D {epilogue} {mc} {block_n}", d, reference_gemm_1d1d(a1, b1, c))

    cfg = make_config(128, 128, "b", schedule="m_grouped_contiguous")
    launchers.m_grouped_contiguous = (
        lambda a_data, a_scale, b_data, b_scale, d, m_indices, expected_m, alignment:
        launch.launch_grouped("m_grouped_contiguous", a_data, a_scale, b_data, b_scale, d,
                              m_indices, b_data.shape[0], expected_m, alignment, config=cfg))
    # pairs: (0, padding) shared, (2, 2) shared, (2, 1) each its own, (1, past M)
    pair_ids = torch.tensor([0] * 128 + [-1] * 128 + [2] * 256 + [2] * 128 + [1] * 256,
                            device=dev, dtype=torch.int32)
    a_pairs = pyfp8gemm.quantize(randn(pair_ids.numel(), k), "1x128")
    d_pairs = torch.empty(pair_ids.numel(), n, device=dev, dtype=torch.bfloat16)
    pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous(a_pairs, b, d_pairs, pair_ids)
    report("m-grouped contiguous, cluster", d_pairs,
           reference_m_grouped_contiguous(a_pairs, b, pair_ids))

    cfg = make_config(128, 128, "b", schedule="m_grouped_masked")
    launchers.m_grouped_masked = (
        lambda a_data, a_scale, b_data, b_scale, d, masked_m, expected_m:
        launch.launch_grouped("m_grouped_masked", a_data, a_scale, b_data, b_scale, d,
                              masked_m, b_data.shape[0], expected_m, config=cfg))
    d = torch.full((groups, m_max, n), float("nan"), device=dev, dtype=torch.bfloat16)
    pyfp8gemm.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, 100)
    valid = torch.cat([d[0, :40], d[2]]).float()
    report("m-grouped masked, cluster", valid, torch.cat([ref[0, :40], ref[2]]))

    cfg = make_config(64, 16, schedule="m_grouped_masked", swap_ab=True)
    d = torch.full((groups, m_max, n), float("nan"), device=dev, dtype=torch.bfloat16)
    pyfp8gemm.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, 100)
    valid = torch.cat([d[0, :40], d[2]]).float()
    report("m-grouped masked, swap-AB", valid, torch.cat([ref[0, :40], ref[2]]))
    torch.cuda.synchronize()
print("done")
