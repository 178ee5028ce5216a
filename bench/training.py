"""FP8 training benchmarks: `python -m bench.training --kind KIND` (or `python -m bench --kind
KIND` where bench/cli.py lists it).

Kinds:

* ``wgrad-1d1d``: the weight-gradient GEMM dW (n, k) += dY^T (n, T) @ X (T, k), FP32 output
  accumulated in place (d = c), both operands 1x128 along the T = 4096 tokens: DeepGEMM's
  wgrad test, (M, N, K) = (n, k, 4096) over its 7 (n, k) pairs.
* ``k-grouped``: MoE weight gradients, DeepGEMM's k-grouped test shapes (G, M, N, expected k)
  with seeded per-group k = align(expected * U(0.7, 1.3), 128), d = c in place.
* ``train-step``: forward + backward of one Linear on DeepSeek-V3's MLP shapes (hidden 7168,
  dense intermediate 18432, expert intermediate 2048) at 4096-16384 tokens:
  pyfp8gemm.nn.Linear next to torch.nn.Linear in bf16, and where pyfp8gemm's time goes (the
  three GEMMs, the quantizations, the rest).

Columns (those that exist here; a provider that raises shows ``error`` with the message below
the table, one that is not installed ``n/a``):

* pyfp8gemm: ``fp8_gemm_nt_1d1d`` / ``k_grouped_fp8_gemm_nt_contiguous``;
* deepgemm: ``deep_gemm.fp8_gemm_nt(..., c=d, recipe=(1, 1, 128))`` (v1:
  ``wgrad_gemm_fp8_fp8_fp32_nt``) / ``deep_gemm.k_grouped_fp8_gemm_nt_contiguous``, when
  ``import deep_gemm`` works;
* cublas-blockwise: torch._scaled_mm with 1x128 scales on both operands (cuBLASLt), bf16 out,
  then added into the FP32 d (cuBLASLt has no FP32 output for block scales); k-grouped: one
  call per non-empty group;
* torch-bf16: the bf16 GEMM of the unquantized inputs added into d (what a bf16 trainer runs).

Timing as in `python -m bench` (bench/timing.py: do_bench, CUDA events or the profiler, L2
flushed before each run). TFLOPS = 2 * M * N * K / time; ratios = baseline time / time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from typing import Callable

KINDS = ("wgrad-1d1d", "k-grouped", "train-step")
DEEPGEMM_NK = ((2112, 7168), (576, 7168), (24576, 1536), (32768, 512), (7168, 16384),
               (4096, 7168), (7168, 2048))
WGRAD_TOKENS = 4096
K_GROUPED = ((4, 4096, 7168, 8192), (4, 7168, 2048, 8192), (8, 4096, 7168, 4096),
             (8, 7168, 2048, 4096), (16, 4096, 7168, 2048), (16, 7168, 2048, 2048))
#: DeepSeek-V3: hidden 7168, dense MLP intermediate 18432, routed-expert intermediate 2048.
TRAIN_LINEARS = ((7168, 18432), (18432, 7168), (7168, 2048), (2048, 7168))
TRAIN_TOKENS = (4096, 8192, 16384)
GEMM_PROVIDERS = ("pyfp8gemm", "deepgemm", "cublas-blockwise", "torch-bf16")
BASELINE_KEY = "cublas-blockwise"


class NotAvailable(Exception):
    """The provider cannot run here (not installed, or not this shape)."""


@dataclass
class Case:
    kind: str
    label: str
    flops: int
    params: dict


@dataclass
class CaseResult:
    case: Case
    times_ms: dict = field(default_factory=dict)      # provider -> ms
    notes: dict = field(default_factory=dict)         # provider -> "n/a: ..." / "error: ..."
    breakdown: dict = field(default_factory=dict)     # train-step: part -> ms


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def make_cases(kind: str, seed: int = 0) -> list[Case]:
    if kind == "wgrad-1d1d":
        return [Case(kind, f"{n}x{k}x{WGRAD_TOKENS}", 2 * n * k * WGRAD_TOKENS,
                     dict(m=n, n=k, k=WGRAD_TOKENS)) for n, k in DEEPGEMM_NK]
    if kind == "k-grouped":
        rng = random.Random(seed)
        cases = []
        for groups, m, n, expected in K_GROUPED:
            ks = [_align(max(1, int(expected * rng.uniform(0.7, 1.3))), 128) for _ in range(groups)]
            cases.append(Case(kind, f"G{groups} {m}x{n} k~{expected}", 2 * m * n * sum(ks),
                              dict(m=m, n=n, ks=ks)))
        return cases
    if kind == "train-step":
        return [Case(kind, f"T{t} {i}->{o}", 3 * 2 * t * i * o, dict(tokens=t, in_f=i, out_f=o))
                for i, o in TRAIN_LINEARS for t in TRAIN_TOKENS]
    raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------------------
# wgrad-1d1d and k-grouped
# ---------------------------------------------------------------------------------------------


def _quantized_tokens(tokens: int, channels: int, gen):
    """A bf16 (tokens, channels) activation and its transposed 1x128 quantization."""
    import torch
    from pyfp8gemm.host.quantize_training import quantize_transposed

    x = torch.randn(tokens, channels, generator=gen, device="cuda", dtype=torch.bfloat16)
    return x, quantize_transposed(x)


def make_gemm_inputs(case: Case, seed: int) -> dict:
    import torch
    import pyfp8gemm

    gen = torch.Generator(device="cuda").manual_seed(seed)
    p = case.params
    if case.kind == "wgrad-1d1d":
        dy, a = _quantized_tokens(p["k"], p["m"], gen)
        x, b = _quantized_tokens(p["k"], p["n"], gen)
        return dict(a=a, b=b, a_bf16=dy.t().contiguous(), b_bf16=x.t().contiguous(),
                    c=torch.randn(p["m"], p["n"], device="cuda", generator=gen) * 32)
    parts = []
    for k in p["ks"]:
        _, qa = _quantized_tokens(k, p["m"], gen)
        _, qb = _quantized_tokens(k, p["n"], gen)
        parts.append((qa, qb))
    a = (torch.cat([qa.data.flatten() for qa, _ in parts]),
         pyfp8gemm.to_mn_major_tma_aligned(torch.cat([qa.scale for qa, _ in parts], dim=1)))
    b = (torch.cat([qb.data.flatten() for _, qb in parts]),
         pyfp8gemm.to_mn_major_tma_aligned(torch.cat([qb.scale for _, qb in parts], dim=1)))
    groups = len(p["ks"])
    return dict(a=a, b=b, groups=parts,
                c=torch.randn(groups, p["m"], p["n"], device="cuda", generator=gen) * 32)


def _scaled_mm_1x128(a_data, a_scale, b_data, b_scale, out):
    """cuBLASLt block-scaled GEMM with 1x128 scales on both operands (bf16 out)."""
    import torch

    return torch._scaled_mm(a_data, b_data.t(), a_scale.t().contiguous().t(),
                            b_scale.t().contiguous(), out_dtype=torch.bfloat16, out=out)


def prepare_gemm(provider: str, case: Case, inputs: dict) -> tuple[Callable, object]:
    """(run, d): run() computes d = c + A @ B^T (in place: d starts as a copy of c)."""
    import torch

    p = case.params
    d = inputs["c"].clone()
    if provider == "pyfp8gemm":
        from pyfp8gemm.host.gemm_1d1d import (fp8_gemm_nt_1d1d,
                                              k_grouped_fp8_gemm_nt_contiguous)
        if case.kind == "wgrad-1d1d":
            return (lambda: fp8_gemm_nt_1d1d(inputs["a"], inputs["b"], d, d)), d
        ks_tensor = torch.tensor(p["ks"], dtype=torch.int32, device="cuda")
        return (lambda: k_grouped_fp8_gemm_nt_contiguous(inputs["a"], inputs["b"], d, p["ks"],
                                                         ks_tensor, d)), d
    if provider == "deepgemm":
        try:
            import deep_gemm
        except Exception as error:
            raise NotAvailable(f"import deep_gemm failed: {type(error).__name__}: {error}")
        if case.kind == "wgrad-1d1d":
            a = (inputs["a"].data, inputs["a"].scale)
            b = (inputs["b"].data, inputs["b"].scale)
            if hasattr(deep_gemm, "fp8_gemm_nt"):
                return (lambda: deep_gemm.fp8_gemm_nt(a, b, d, c=d, recipe=(1, 1, 128))), d
            if hasattr(deep_gemm, "wgrad_gemm_fp8_fp8_fp32_nt"):
                return (lambda: deep_gemm.wgrad_gemm_fp8_fp8_fp32_nt(a, b, d)), d
            raise NotAvailable("deep_gemm has no 1D1D (wgrad) GEMM")
        gemm = getattr(deep_gemm, "k_grouped_fp8_gemm_nt_contiguous", None)
        if gemm is None:
            raise NotAvailable("deep_gemm has no k_grouped_fp8_gemm_nt_contiguous")
        ks_tensor = torch.tensor(p["ks"], dtype=torch.int32, device="cuda")
        return (lambda: gemm(inputs["a"], inputs["b"], d, p["ks"], ks_tensor, d)), d
    if provider == "cublas-blockwise":
        if not hasattr(torch, "_scaled_mm"):
            raise NotAvailable("this torch has no torch._scaled_mm")
        pairs = ([(inputs["a"], inputs["b"], d)] if case.kind == "wgrad-1d1d" else
                 [(qa, qb, d[g]) for g, (qa, qb) in enumerate(inputs["groups"]) if qa.shape[1]])
        outs = [torch.empty(dd.shape, dtype=torch.bfloat16, device="cuda") for _, _, dd in pairs]

        def run():
            for (qa, qb, dd), out in zip(pairs, outs):
                _scaled_mm_1x128(qa.data, qa.scale, qb.data, qb.scale, out)
                dd.add_(out)
        return run, d
    if provider == "torch-bf16":
        if case.kind != "wgrad-1d1d":
            raise NotAvailable("k-grouped: no bf16 column (inputs are made FP8 directly)")
        a16, b16 = inputs["a_bf16"], inputs["b_bf16"]
        out = torch.empty(d.shape, dtype=torch.bfloat16, device="cuda")

        def run():
            torch.matmul(a16, b16.t(), out=out)
            d.add_(out)
        return run, d
    raise ValueError(f"unknown provider {provider!r}")


# ---------------------------------------------------------------------------------------------
# train-step
# ---------------------------------------------------------------------------------------------


def _host_ms(run, steps: int = 20) -> float:
    """The host's side of a step: wall time of `steps` back-to-back calls, measured before
    the GPU work is waited for (the queue is deep enough not to block), per step. Close to
    the step's time means the step is host-bound."""
    import time

    import torch

    run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / steps * 1e3


def _torch_ops(fn):
    """fn with the fused quantization kernel switched off: the torch-op path, timed next to the
    kernel for comparison."""
    from pyfp8gemm.host.quantize_kernel import torch_ops_only

    def run():
        with torch_ops_only():
            return fn()
    return run


def measure_train_step(case: Case, timer, seed: int) -> CaseResult:
    """Forward + backward of pyfp8gemm.nn.Linear and of torch.nn.Linear (bf16 parameters and
    activations), and pyfp8gemm's parts timed alone: the forward, dgrad and wgrad GEMMs, the
    two double quantizations (x, dY), the weight's (W and W^T, once per optimizer step)."""
    import torch
    import pyfp8gemm.nn as fnn
    from pyfp8gemm.host.gemm import fp8_gemm_nt
    from pyfp8gemm.host.gemm_1d1d import fp8_gemm_nt_1d1d
    from pyfp8gemm.host.quantize_training import quantize_rowwise_and_transposed
    from pyfp8gemm.nn.functional import quantized_weight

    p = case.params
    t, i, o = p["tokens"], p["in_f"], p["out_f"]
    result = CaseResult(case)
    torch.manual_seed(seed)
    ref = torch.nn.Linear(i, o, bias=False, device="cuda", dtype=torch.bfloat16)
    lin = fnn.Linear(i, o, bias=False, device="cuda", dtype=torch.bfloat16)
    lin.load_state_dict(ref.state_dict())
    x = torch.randn(t, i, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(t, o, device="cuda", dtype=torch.bfloat16)

    def step(module):
        def run():
            module.weight.grad = None
            x.grad = None
            module(x).backward(dy)
        return run

    for key, module in (("pyfp8gemm", lin), ("torch-bf16", ref)):
        try:
            result.times_ms[key] = timer(step(module))
        except Exception as error:   # e.g. a kernel not built yet
            result.notes[key] = f"error: {type(error).__name__}: {error}"[:300]
    if "pyfp8gemm" in result.times_ms:
        result.breakdown["(host: Python + launches per step)"] = _host_ms(step(lin))

    parts = {}
    with torch.no_grad():
        x_rows, x_t = quantize_rowwise_and_transposed(x)
        dy_rows, dy_t = quantize_rowwise_and_transposed(dy)
        entry = quantized_weight(lin.weight)
        wt = entry.transposed()
        y = torch.empty(t, o, dtype=torch.bfloat16, device="cuda")
        dx = torch.empty(t, i, dtype=torch.bfloat16, device="cuda")
        dw = torch.empty(o, i, dtype=torch.float32, device="cuda")
        parts["quantize x (both layouts)"] = lambda: quantize_rowwise_and_transposed(x)
        parts["quantize dY (both layouts)"] = lambda: quantize_rowwise_and_transposed(dy)
        parts["(x, as torch ops: not in the step)"] = _torch_ops(
            lambda: quantize_rowwise_and_transposed(x))
        parts["GEMM forward (1D2D)"] = lambda: fp8_gemm_nt(x_rows, entry.w, y)
        parts["GEMM dgrad (1D2D)"] = lambda: fp8_gemm_nt(dy_rows, wt, dx)
        parts["GEMM wgrad (1D1D)"] = lambda: fp8_gemm_nt_1d1d(dy_t, x_t, dw)
        parts["quantize W and W^T (per update)"] = lambda: (
            fnn.functional.clear_weight_cache(), quantized_weight(lin.weight, transposed=True))
        parts["(W and W^T, as torch ops)"] = _torch_ops(lambda: (
            fnn.functional.clear_weight_cache(), quantized_weight(lin.weight, transposed=True)))
        for name, fn in parts.items():
            try:
                result.breakdown[name] = timer(fn)
            except Exception as error:
                result.notes[name] = f"error: {type(error).__name__}: {error}"[:300]
    return result


# ---------------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------------


def measure(kind: str, cases: list[Case], providers, timer, seed: int = 0,
            log=print, rounds: int = 2) -> list[CaseResult]:
    """Per case: each provider checked once against the first, then timed in `rounds`
    interleaved rounds (provider after provider); a cell is the median of its rounds."""
    import statistics

    import torch
    from pyfp8gemm.testing import calc_diff

    results = []
    for index, case in enumerate(cases):
        log(f"[{index + 1}/{len(cases)}] {case.label}")
        if kind == "train-step":
            results.append(measure_train_step(case, timer, seed + index))
            continue
        result = CaseResult(case)
        inputs = make_gemm_inputs(case, seed + index)
        reference = None
        runs = {}
        for provider in providers:
            try:
                run, d = prepare_gemm(provider, case, inputs)
                run()                              # checked once: d = c + A @ B^T
                torch.cuda.synchronize()
                if reference is None:
                    reference = d.clone()
                elif calc_diff(d, reference) > 1e-3:
                    result.notes[provider] = f"note: calc_diff vs {providers[0]} above 1e-3"
                runs[provider] = run
            except NotAvailable as why:
                result.notes[provider] = f"n/a: {why}"
            except Exception as error:
                result.notes[provider] = f"error: {type(error).__name__}: {error}"[:300]
        times = {provider: [] for provider in runs}
        for _ in range(rounds):
            for provider, run in runs.items():     # d keeps accumulating: the timed op
                try:
                    times[provider].append(timer(run))
                except Exception as error:
                    result.notes[provider] = f"error: {type(error).__name__}: {error}"[:300]
        result.times_ms = {p: statistics.median(t) for p, t in times.items() if t}
        results.append(result)
        del inputs, runs
        torch.cuda.empty_cache()
    return results


def format_report(kind: str, results: list[CaseResult], providers, baseline: str) -> str:
    lines = []
    columns = list(providers)
    header = f"{'case':<28}" + "".join(f"{p:>26}" for p in columns)
    lines.append(header)
    for r in results:
        base = r.times_ms.get(baseline)
        row = f"{r.case.label:<28}"
        for p in columns:
            ms = r.times_ms.get(p)
            if ms is None:
                cell = r.notes.get(p, "-").split(":")[0]
            else:
                tflops = r.case.flops / (ms * 1e-3) / 1e12
                ratio = f" ({base / ms:.2f}x)" if base else ""
                cell = f"{ms:.3f} ms {tflops:.0f}T{ratio}"
            row += f"{cell:>26}"
        ours, theirs = r.times_ms.get("pyfp8gemm"), r.times_ms.get("deepgemm")
        if ours and theirs:
            row += f"  vs DeepGEMM x{theirs / ours:.2f}"
        lines.append(row)
        for part, ms in r.breakdown.items():
            lines.append(f"    {part:<36} {ms:8.3f} ms")
        if r.breakdown:
            gemms = sum(ms for part, ms in r.breakdown.items() if part.startswith("GEMM"))
            quant = sum(ms for part, ms in r.breakdown.items() if part.startswith("quantize"))
            total = r.times_ms.get("pyfp8gemm")
            if total:
                lines.append(f"    {'GEMMs / quantization / rest':<36} {gemms:8.3f} / "
                             f"{quant:.3f} / {total - gemms - quant:.3f} ms of {total:.3f} ms")
    notes = [(r.case.label, p, n) for r in results for p, n in r.notes.items()]
    if notes:
        lines.append("")
        lines += [f"  {label} / {p}: {n}" for label, p, n in notes]
    return "\n".join(lines)


def run_training(kind: str, providers=None, timing: str = "auto", warmup_ms: float = 25.0,
                 rep_ms: float = 100.0, seed: int = 0, json_path: str | None = None,
                 rounds: int = 2) -> int:
    """The entry point of `python -m bench --kind KIND` for the training kinds; exit status."""
    import torch

    if not torch.cuda.is_available():
        print("bench.training needs a CUDA GPU (Hopper for pyfp8gemm).", file=sys.stderr)
        return 2
    from bench.timing import make_timer, resolve_timing_method

    if kind == "train-step":
        providers = ["pyfp8gemm", "torch-bf16"]
        baseline = "torch-bf16"
    else:
        providers = list(providers or GEMM_PROVIDERS)
        unknown = [p for p in providers if p not in GEMM_PROVIDERS]
        if unknown:
            print(f"unknown providers {unknown}; known: {', '.join(GEMM_PROVIDERS)}",
                  file=sys.stderr)
            return 1
        baseline = BASELINE_KEY if BASELINE_KEY in providers else providers[0]
    method = resolve_timing_method(timing)
    timer = make_timer(method, warmup_ms, rep_ms)
    cases = make_cases(kind, seed)
    results = measure(kind, cases, providers, timer, seed=seed, rounds=rounds,
                      log=lambda s: print(s, file=sys.stderr))
    print(f"{kind} on {torch.cuda.get_device_name()} (timing: {method}; ratios: {baseline}'s "
          f"time / the column's; vs DeepGEMM: its time / pyfp8gemm's; median of {rounds} "
          f"interleaved rounds)")
    print(format_report(kind, results, providers, baseline))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"kind": kind, "timing": method, "baseline": baseline,
                       "device": torch.cuda.get_device_name(),
                       "results": [dict(case=r.case.label, params=r.case.params,
                                        flops=r.case.flops, times_ms=r.times_ms,
                                        notes=r.notes, breakdown=r.breakdown)
                                   for r in results]}, f, indent=1)
        print(f"wrote {json_path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--providers", help=f"comma-separated, of {', '.join(GEMM_PROVIDERS)}")
    parser.add_argument("--timing", default="auto",
                        choices=("auto", "do_bench", "events", "profiler"))
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.list:
        for case in make_cases(args.kind, args.seed):
            print(f"{case.label:<28} {case.params}")
        return 0
    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    return run_training(args.kind, providers, args.timing, args.warmup_ms, args.rep_ms,
                        args.seed, args.json)


if __name__ == "__main__":
    sys.exit(main())
