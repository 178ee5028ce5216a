"""One launch of ours and one of DeepGEMM's 1D2D kernel on the same inputs, for Nsight Compute.

python scripts/ncu_pair.py MxNxK SPEC      (SPEC: scripts/config_spec.py, or "auto")
python scripts/ncu_pair.py KIND:INDEX SPEC  an m-grouped benchmark case (ab_grouped.py's KIND and
                                            INDEX, e.g. m-grouped-contiguous:4): DeepGEMM's
                                            grouped kernel next to ours

Each kernel runs a few times to compile and warm up, then once inside an NVTX range ("ours",
"deepgemm") so that `ncu --nvtx --nvtx-include ours/ --nvtx-include deepgemm/` profiles just
those two launches (scripts/device_run.sh's `ncu` step). Outputs are NaN-poisoned and checked.
"""
import sys

import torch

from config_spec import parse
from pyfp8gemm import to_mn_major_tma_aligned
from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.host.launch import fp8_gemm_nt_launch
from pyfp8gemm.testing import calc_diff


def dense_pair(shape, spec):
    """(runs, outputs, check) of a dense MxNxK problem: check(out) -> (calc_diff, NaNs left)."""
    m, n, k = map(int, shape.lower().split("x"))
    qa = quantize(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), "1x128")
    qb = quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), "128x128")
    ref = qa.dequantize().float() @ qb.dequantize().float().T

    cfg = None if spec == "auto" else parse(spec)
    ours = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    runs = {"ours": lambda: fp8_gemm_nt_launch(qa.data, qa.scale, qb.data, qb.scale, ours,
                                               config=cfg)}
    outs = {"ours": ours}
    try:
        import deep_gemm
        dg_a = (qa.data, to_mn_major_tma_aligned(qa.scale))
        dg = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
        runs["deepgemm"] = lambda: deep_gemm.fp8_gemm_nt(dg_a, (qb.data, qb.scale), dg)
        outs["deepgemm"] = dg
    except ImportError as error:
        print(f"DeepGEMM left out: {error}")

    def check(out):
        return calc_diff(out, ref), int(out.isnan().sum())
    return runs, outs, check


def grouped_pair(case_name, spec):
    """(runs, outputs, check) of an m-grouped benchmark case, checked on the valid rows."""
    from ab_grouped import FORCED, force_configs
    from bench import grouped
    kind, index = case_name.split(":")
    case = grouped.make_cases(kind)[int(index)]
    inputs = grouped.make_inputs(case, int(index))
    force_configs()
    FORCED["config"] = None if spec == "auto" else parse(spec, kind.replace("-", "_")).config
    runs = {"ours": grouped.prepare_pyfp8gemm(case, inputs)}
    try:
        runs["deepgemm"] = grouped.prepare_deepgemm(case, inputs)
    except Exception as error:                  # NotAvailable, or no deep_gemm here
        print(f"DeepGEMM left out: {error}")
    outs = {}
    for name, run in runs.items():              # poison the output, then let one run fill it
        out = run()
        out.fill_(float("nan"))
        outs[name] = out
    print(case.label)
    return runs, outs, lambda out: grouped.check_output(case, inputs, out)


pair = grouped_pair if ":" in sys.argv[1] else dense_pair
runs, outs, check = pair(sys.argv[1], sys.argv[2])
for name, run in runs.items():
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    diff, nan_left = check(outs[name])
    print(f"{name}: calc_diff {diff:.1e}, NaN left {nan_left}")
for name, run in runs.items():
    torch.cuda.nvtx.range_push(name)
    run()
    torch.cuda.nvtx.range_pop()
torch.cuda.synchronize()
