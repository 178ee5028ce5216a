"""Sustained-load probe (GPU): TFLOPS, board power and SM clock of GEMMs run back to back.

    python scripts/power_probe.py [M N K] [--rep-ms 1500] [--specs SPEC ...]
    python scripts/power_probe.py --case KIND:INDEX [--specs SPEC ...]   (a grouped benchmark
        case, bench/grouped.py: the heuristic's pick, the SPECs, and DeepGEMM where it imports)

SPECs (scripts/config_spec.py) replace the default pyfp8gemm contenders (the heuristic's choice
and 128x128 multicast A); cuBLAS block-wise always runs. --deepgemm adds DeepGEMM's own kernel
from the local, uncommitted harness in .dgref/ (bench/JOURNAL.md, session 6), if present; it
is how session 7 found DeepGEMM at the same power cap and clocks as ours.

An H200 running FP8 GEMMs flat out is power-limited, so a kernel's sustained speed depends on
how much power it burns per FLOP: this prints, per run, do_bench's median next to the mean
power and SM clock that NVML saw meanwhile (sampled every 10 ms), alternating providers.
"""
import argparse
import os
import sys
import threading
import time

import pynvml
import torch
from triton.testing import do_bench

from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.host.heuristics import choose_dense, make_config
from pyfp8gemm.host.launch import fp8_gemm_nt_launch


class Sampler:
    def __init__(self, handle):
        self.handle, self.samples, self.running = handle, [], False

    def __enter__(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while self.running:
            power = pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000
            clock = pynvml.nvmlDeviceGetClockInfo(self.handle, pynvml.NVML_CLOCK_SM)
            self.samples.append((power, clock))
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    def means(self):
        n = max(1, len(self.samples))
        return sum(p for p, _ in self.samples) / n, sum(c for _, c in self.samples) / n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("shape", nargs="*", type=int, default=[4096, 4096, 7168])
    parser.add_argument("--rep-ms", type=float, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--specs", nargs="*", default=None)
    parser.add_argument("--deepgemm", action="store_true",
                        help="also run DeepGEMM's kernel (needs the .dgref/ harness)")
    parser.add_argument("--case", default=None, help="KIND:INDEX of bench/grouped.py's cases")
    args = parser.parse_args()
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    if args.case:
        label, flops, runs = grouped_runs(args.case, args.specs or [])
        sustain(handle, label, flops, runs, args)
        return
    m, n, k = args.shape
    a = quantize(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), "1x128")
    b = quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), "128x128")
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    scale_a = a.scale.t().contiguous().t()
    heuristic = choose_dense(m, n, k, torch.cuda.get_device_properties(0).multi_processor_count)
    if args.specs:
        from config_spec import parse
        configs = {f"pyfp8gemm {spec}": parse(spec) for spec in args.specs}
    else:
        configs = {f"pyfp8gemm {heuristic.name}": heuristic,
                   "pyfp8gemm 128x128 mcA": make_config(128, 128, "a")}
    runs = {name: (lambda cfg=cfg: fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out,
                                                       config=cfg))
            for name, cfg in configs.items()}
    runs["cuBLAS block-wise"] = lambda: torch._scaled_mm(a.data, b.data.t(), scale_a=scale_a,
                                                         scale_b=b.scale.t(),
                                                         out_dtype=torch.bfloat16)
    if args.deepgemm:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sys.path.insert(0, os.path.join(root, ".dgref"))
        from dg_launch import make_dg_runner
        out_dg = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        runs["DeepGEMM"] = make_dg_runner(m, n, k, a.data, a.scale, b.data, b.scale, out_dg)
    sustain(handle, f"{m}x{n}x{k}", 2 * m * n * k, runs, args)


def grouped_runs(case_spec, specs):
    """(label, FLOPs, {name: run}) of a grouped benchmark case: the heuristic's kernel, each
    SPEC forced (scripts/ab_grouped.py's way), DeepGEMM's where it imports."""
    import ab_grouped
    from bench import grouped
    from config_spec import parse
    kind, index = case_spec.split(":")
    case = grouped.make_cases(kind)[int(index)]
    inputs = grouped.make_inputs(case, int(index))
    ab_grouped.force_configs()
    schedule = kind.replace("-", "_")

    def forced(config):
        run = grouped.prepare_pyfp8gemm(case, inputs)

        def call():
            ab_grouped.FORCED["config"] = config
            return run()
        return call

    runs = {"pyfp8gemm (heuristic)": forced(None)}
    for spec in specs:
        runs[f"pyfp8gemm {spec}"] = forced(parse(spec, schedule).config)
    try:
        runs["DeepGEMM"] = grouped.prepare_deepgemm(case, inputs)
    except Exception as error:                 # not built here
        print(f"(DeepGEMM left out: {error})")
    return case.label, case.flops(), runs


def sustain(handle, label, flops, runs, args):
    """Each run for rep_ms back to back, the providers alternating, `rounds` times: do_bench's
    median next to NVML's mean board power and SM clock meanwhile."""
    for fn in runs.values():
        fn()
    torch.cuda.synchronize()
    print(f"{label}, do_bench rep {args.rep_ms:.0f} ms per run")
    for r in range(args.rounds):
        for name, fn in runs.items():
            with Sampler(handle) as sampler:
                ms = do_bench(fn, warmup=100, rep=args.rep_ms, return_mode="median")
            power, clock = sampler.means()
            print(f"  {name:52} {ms * 1e3:8.1f} us {flops / ms / 1e9:7.0f} TFLOPS  {power:5.0f} W"
                  f"  {clock:5.0f} MHz", flush=True)


if __name__ == "__main__":
    main()
