"""scripts/ab_time.py with `:bkm` specs (bench/experiments/b-kblock-major.patch applied): B laid out
K-block-major, (K/128, N, 128), and its tensor map built for that layout (experiment only)."""
import argparse, statistics, sys
sys.path.insert(0, "scripts")
import torch
from bench.timing import flush_l2
from config_spec import parse
from pyfp8gemm.host import launch, driver
from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.host.launch import fp8_gemm_nt_launch
from pyfp8gemm.testing import calc_diff
from pyfp8gemm.device.gemm_1d2d import BLOCK_K, D_STORE_ROWS

parser = argparse.ArgumentParser()
parser.add_argument("m", type=int); parser.add_argument("n", type=int); parser.add_argument("k", type=int)
parser.add_argument("specs", nargs="+"); parser.add_argument("--rounds", type=int, default=300)
args = parser.parse_args()
m, n, k = args.m, args.n, args.k
a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
qa, qb = quantize(a, "1x128"), quantize(b, "128x128")
ref = qa.dequantize().double() @ qb.dequantize().double().T
num_kb = k // 128
b_kbm = qb.data.view(n, num_kb, 128).permute(1, 0, 2).contiguous()
B_SUB = {qb.data.data_ptr(): b_kbm}

orig = launch.Plan.param_block
def param_block(self, a_ptr, a_scale_ptr, a_scale_stride, b_ptr, b_scale_ptr, out_ptr,
                workspace_ptr=0, counters_ptr=0):
    block = orig(self, a_ptr, a_scale_ptr, a_scale_stride, b_ptr, b_scale_ptr, out_ptr,
                 workspace_ptr, counters_ptr)
    if not self.cfg.b_kblock_major:
        return block
    cfg = self.cfg
    tensormap = driver.tensormap_2d
    bk = B_SUB[b_ptr]
    return driver.ParamBlock((
        tensormap(driver.DTYPE_FP8, a_ptr, k, m, k, BLOCK_K, cfg.block_m, 128),
        tensormap(driver.DTYPE_FP8, bk.data_ptr(), 128, num_kb * n, 128, BLOCK_K, cfg.block_n, 128),
        tensormap(driver.DTYPE_F32, a_scale_ptr, m, -(-k // BLOCK_K), a_scale_stride * 4,
                  cfg.block_m, 1),
        tensormap(driver.DTYPE_BF16, out_ptr, n, m, n * 2, cfg.swizzle_d // 2, D_STORE_ROWS,
                  cfg.swizzle_d),
        (driver.c_int64, b_scale_ptr),
        (driver.c_int64, workspace_ptr), (driver.c_int64, counters_ptr),
        (driver.c_int32, m), (driver.c_int32, n), (driver.c_int32, k),
        (driver.c_int32, cfg.split_k), (driver.c_int32, self.whole_tiles),
    ))
launch.Plan.param_block = param_block

contenders = {"cuBLAS block-wise": lambda: torch._scaled_mm(
    qa.data, qb.data.t(), scale_a=qa.scale, scale_b=qb.scale.t(), out_dtype=torch.bfloat16)}
diffs = {}
for spec in args.specs:
    cfg = parse(spec)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    launch_fn = (lambda cfg=cfg, out=out:
                 fp8_gemm_nt_launch(qa.data, qa.scale, qb.data, qb.scale, out, config=cfg))
    launch_fn(); torch.cuda.synchronize()
    diffs[spec] = calc_diff(out, ref)
    contenders[spec] = launch_fn
names = list(contenders)
for name in names:
    for _ in range(20):
        contenders[name]()
torch.cuda.synchronize()
events = {name: [] for name in names}
for r in range(args.rounds):
    for i in range(len(names)):
        name = names[(i + r) % len(names)]
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        flush_l2(); s.record(); contenders[name](); e.record()
        events[name].append((s, e))
torch.cuda.synchronize()
times = {name: [s.elapsed_time(e) for s, e in ev] for name, ev in events.items()}
tflops = lambda ms: 2 * m * n * k / ms / 1e9
first = args.specs[0]
print(f"{m}x{n}x{k}, {args.rounds} interleaved rounds")
for name in names:
    t = sorted(times[name]); med = statistics.median(t)
    paired = statistics.median(x / y for x, y in zip(times[first], times[name]))
    diff = f"diff {diffs[name]:.1e}" if name in diffs else ""
    print(f"  {name:34} {tflops(med):6.0f} TFLOPS {med*1000:7.1f} us  speed vs first x{paired:.3f}  {diff}", flush=True)
