"""Grouped (MoE) FP8 GEMMs side by side: `python -m bench --kind m-grouped-contiguous` and
`--kind m-grouped-masked` (or `python -m bench.grouped --kind ...`).

The cases are DeepGEMM's test shapes (../shared/DEEPGEMM_API.md, section 4):

* contiguous: (G, expected M per group) in {(4, 8192), (8, 4096)} x (N, K) in {(6144, 7168),
  (7168, 3072), (4096, 4096), (4096, 2048)}; each group's M drawn from 0.7-1.3 x expected
  (seeded), segments padded to 128 rows with -1 and zero A rows;
* masked: (G, expected M) in {(32, 192), (6, 1024), (32, 20), (6, 20)} x the same (N, K);
  masked_m[g] drawn the same way, M_max = align(1.3 x expected + 1, 128), expected_m =
  1.2 x expected (DeepGEMM's test passes that hint).

Columns (those that exist here):

* pyfp8gemm: m_grouped_fp8_gemm_nt_contiguous / _masked, the library under test;
* deepgemm: DeepGEMM's own call, when `import deep_gemm` works;
* cublas-loop: a per-group loop of torch._scaled_mm with 1x128 / 128x128 block scales
  (cuBLASLt), one launch per non-empty group, the group sizes known on the host (what a
  framework without a grouped kernel does; it cannot run inside a CUDA graph with new counts);
* torch-grouped-bf16: torch._grouped_mm in bf16 on the unquantized inputs, where torch has it
  (contiguous: offsets at the padded segment ends; masked: a batched (G, M_max) product of
  every row, masked or not).

FLOPs count the valid rows only (sum of the real group sizes / of masked_m), as DeepGEMM
does; GB/s (printed for the masked cases with expected M <= 64, where the weights dominate
and the GEMM is memory bound) counts the bytes a perfect kernel moves: the valid rows of A and
D, all of B, and the scales. Ratios are the baseline's time over the column's (> 1 is faster).
Every cell is checked once (calc_diff of the valid rows against the fp32 product of the
unquantized inputs, < 1e-3 expected) before it is timed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from typing import Callable

KINDS = ("m-grouped-contiguous", "m-grouped-masked")
NK_SHAPES = ((6144, 7168), (7168, 3072), (4096, 4096), (4096, 2048))
CONTIGUOUS_GROUPS = ((4, 8192), (8, 4096))
MASKED_GROUPS = ((32, 192), (6, 1024), (32, 20), (6, 20))
HALF_EMPTY_GROUPS = ((32, 192), (6, 1024))      # masked, with every odd group empty
ALIGNMENT = 128
SMALL_MASKED_M = 64          # GB/s is printed at or below this expected M
PROVIDER_KEYS = ("pyfp8gemm", "deepgemm", "cublas-loop", "torch-grouped-bf16")
BASELINE_KEY = "cublas-loop"


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass(frozen=True)
class GroupedCase:
    """One grouped problem: the kind, G, expected M, N, K and the drawn per-group sizes."""

    kind: str
    groups: int
    expected_m: int
    n: int
    k: int
    group_m: tuple[int, ...]            # the real rows of each group (contiguous) / masked_m
    m_max: int = 0                      # masked only

    @property
    def label(self) -> str:
        empty = sum(1 for m in self.group_m if m == 0)
        half = f" ({empty} empty)" if empty else ""
        return f"G={self.groups}{half} m~{self.expected_m} N={self.n} K={self.k}"

    @property
    def masked_hint(self) -> int:       # masked: the expected_m both kernels are told
        return int(self.expected_m * 1.2)

    @property
    def valid_rows(self) -> int:
        return sum(self.group_m)

    @property
    def m_sum(self) -> int:             # contiguous: rows of the stacked A
        return sum(_align(m, ALIGNMENT) for m in self.group_m)

    def flops(self) -> int:
        return 2 * self.valid_rows * self.n * self.k

    def bytes(self) -> int:
        kb = -(-self.k // 128)
        nb = -(-self.n // 128)
        rows = self.valid_rows
        return (rows * self.k + self.groups * self.n * self.k + 2 * rows * self.n
                + 4 * rows * kb + 4 * self.groups * nb * kb)


def make_cases(kind: str, seed: int = 0) -> list[GroupedCase]:
    """DeepGEMM's shapes for `kind`, with per-group sizes drawn from 0.7-1.3 x expected."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    rng = random.Random(seed)
    cases = []
    groups_list = CONTIGUOUS_GROUPS if kind == KINDS[0] else MASKED_GROUPS
    for groups, expected in groups_list:
        for n, k in NK_SHAPES:
            group_m = tuple(int(expected * rng.uniform(0.7, 1.3)) for _ in range(groups))
            m_max = _align(int(expected * 1.3) + 1, ALIGNMENT) if kind == KINDS[1] else 0
            cases.append(GroupedCase(kind, groups, expected, n, k, group_m, m_max))
    if kind == KINDS[1]:
        # Half of the groups empty (every odd one), the same expected-M hint: time should follow
        # the rows present, not the groups allocated.
        for groups, expected in HALF_EMPTY_GROUPS:
            for n, k in NK_SHAPES:
                group_m = tuple(0 if g % 2 else int(expected * rng.uniform(0.7, 1.3))
                                for g in range(groups))
                m_max = _align(int(expected * 1.3) + 1, ALIGNMENT)
                cases.append(GroupedCase(kind, groups, expected, n, k, group_m, m_max))
    return cases


@dataclass
class Cell:
    provider: str
    time_ms: float | None = None
    diff: float | None = None
    note: str = ""


@dataclass
class CaseResult:
    case: GroupedCase
    cells: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Inputs and providers (GPU)
# ---------------------------------------------------------------------------------------------


class NotAvailable(Exception):
    """This column cannot run here or for this case (the message says why)."""


def make_inputs(case: GroupedCase, seed: int) -> dict:
    """bf16 inputs and their FP8 forms (bench.inputs' own quantizers, not the library's), the
    layout tensors, and the fp32 reference of the valid rows."""
    import torch

    from bench.inputs import quantize_1x128, quantize_128x128

    generator = torch.Generator(device="cuda").manual_seed(seed)
    n, k, groups = case.n, case.k, case.groups
    w = torch.randn(groups, n, k, generator=generator, device="cuda", dtype=torch.bfloat16)
    b_pairs = [quantize_128x128(w[g]) for g in range(groups)]
    b_data = torch.stack([p[0] for p in b_pairs])
    b_scale = torch.stack([p[1] for p in b_pairs]).contiguous()
    inputs = {"w": w, "b": (b_data, b_scale), "b_pairs": b_pairs}
    if case.kind == KINDS[0]:
        x = torch.randn(case.m_sum, k, generator=generator, device="cuda", dtype=torch.bfloat16)
        ids = torch.full((case.m_sum,), -1, dtype=torch.int32)
        segments, start = [], 0
        for g, rows in enumerate(case.group_m):
            ids[start:start + rows] = g
            x[start + rows:start + _align(rows, ALIGNMENT)] = 0
            segments.append((start, start + _align(rows, ALIGNMENT), rows))
            start += _align(rows, ALIGNMENT)
        a_data, a_scale = quantize_1x128(x)
        inputs.update(x=x, a=(a_data, a_scale), m_indices=ids.cuda(), segments=segments)
        reference = torch.zeros(case.m_sum, n, device="cuda")
        for g, (begin, _, rows) in enumerate(segments):
            reference[begin:begin + rows] = x[begin:begin + rows].float() @ w[g].float().t()
        inputs["reference"] = reference
    else:
        x = torch.randn(groups, case.m_max, k, generator=generator, device="cuda",
                        dtype=torch.bfloat16)
        quantized = [quantize_1x128(x[g]) for g in range(groups)]
        a_data = torch.stack([q[0] for q in quantized])
        a_scale = torch.stack([q[1] for q in quantized])       # re-laid out per group by the GEMMs
        from pyfp8gemm.host.grouped import to_grouped_mn_major_tma_aligned

        a_scale = to_grouped_mn_major_tma_aligned(a_scale)
        masked_m = torch.tensor(case.group_m, dtype=torch.int32, device="cuda")
        inputs.update(x=x, a=(a_data, a_scale), masked_m=masked_m)
        reference = torch.zeros(groups, case.m_max, n, device="cuda")
        for g, rows in enumerate(case.group_m):
            reference[g, :rows] = x[g, :rows].float() @ w[g].float().t()
        inputs["reference"] = reference
    return inputs


def valid_rows(case: GroupedCase, inputs: dict, d):
    """The valid rows of d (or of the reference), flattened to (rows, N)."""
    import torch

    if case.kind == KINDS[0]:
        return d[inputs["m_indices"] >= 0]
    return torch.cat([d[g, :rows] for g, rows in enumerate(case.group_m)])


def check_output(case: GroupedCase, inputs: dict, out) -> tuple[float, int]:
    """(calc_diff against the fp32 product of the unquantized inputs, NaNs left) on the valid
    rows of an output that was NaN-poisoned before its run."""
    from bench.metrics import calc_diff

    valid = valid_rows(case, inputs, out)
    reference = valid_rows(case, inputs, inputs["reference"])
    return calc_diff(valid.float(), reference), int(valid.isnan().sum())


def checked_run(case: GroupedCase, inputs: dict, run, poison: bool = True) -> tuple[float, int]:
    """Run once into the output poisoned with NaN (run() returns it; poison=False for a run
    that allocates a new one each time) and check it: check_output's pair."""
    import torch

    out = run()
    if poison:
        out.fill_(float("nan"))
        out = run()
    torch.cuda.synchronize()
    return check_output(case, inputs, out)


def prepare_pyfp8gemm(case, inputs) -> Callable:
    import torch

    import pyfp8gemm

    if case.kind == KINDS[0]:
        d = torch.empty(case.m_sum, case.n, dtype=torch.bfloat16, device="cuda")

        def run():
            pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous(inputs["a"], inputs["b"], d,
                                                       inputs["m_indices"],
                                                       expected_m=case.expected_m)
            return d
        return run
    d = torch.empty(case.groups, case.m_max, case.n, dtype=torch.bfloat16, device="cuda")
    hint = case.masked_hint

    def run():
        pyfp8gemm.m_grouped_fp8_gemm_nt_masked(inputs["a"], inputs["b"], d, inputs["masked_m"],
                                               hint)
        return d
    return run


def prepare_deepgemm(case, inputs) -> Callable:
    import torch

    try:
        import deep_gemm
    except Exception as error:
        raise NotAvailable(f"import deep_gemm failed: {type(error).__name__}: {error}")
    if case.kind == KINDS[0]:
        gemm = (getattr(deep_gemm, "m_grouped_fp8_gemm_nt_contiguous", None)
                or getattr(deep_gemm, "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous", None))
        if gemm is None:
            raise NotAvailable("deep_gemm has no m-grouped contiguous GEMM")
        d = torch.empty(case.m_sum, case.n, dtype=torch.bfloat16, device="cuda")

        def run():
            gemm(inputs["a"], inputs["b"], d, inputs["m_indices"])
            return d
        return run
    gemm = (getattr(deep_gemm, "m_grouped_fp8_gemm_nt_masked", None)
            or getattr(deep_gemm, "fp8_m_grouped_gemm_nt_masked", None)
            or getattr(deep_gemm, "m_grouped_gemm_fp8_fp8_bf16_nt_masked", None))
    if gemm is None:
        raise NotAvailable("deep_gemm has no m-grouped masked GEMM")
    d = torch.empty(case.groups, case.m_max, case.n, dtype=torch.bfloat16, device="cuda")
    hint = case.masked_hint

    def run():
        gemm(inputs["a"], inputs["b"], d, inputs["masked_m"], hint)
        return d
    return run


def _scaled_mm_weight_scales(w_scale):
    """scale_b layouts torch._scaled_mm may take (see bench/providers.py)."""
    import torch

    yield w_scale.t()
    rows, cols = w_scale.shape
    if cols % 4:
        padded = torch.empty((rows, _align(cols, 4)), dtype=w_scale.dtype, device=w_scale.device)
        padded[:, :cols] = w_scale
        yield padded[:, :cols].t()


def prepare_cublas_loop(case, inputs) -> Callable:
    import torch

    if not hasattr(torch, "_scaled_mm"):
        raise NotAvailable("this torch has no torch._scaled_mm")
    if case.k % 128 or case.n % 16:
        raise NotAvailable("cuBLAS block-wise scaling needs K % 128 == 0 and N % 16 == 0")
    a_data, a_scale = inputs["a"]
    calls = []            # (a rows, scale_a (rows, kb) with strides (1, rows), g, out rows)
    if case.kind == KINDS[0]:
        d = torch.empty(case.m_sum, case.n, dtype=torch.bfloat16, device="cuda")
        for g, (begin, end, rows) in enumerate(inputs["segments"]):
            if rows:
                stop = begin + _align(rows, 4)
                calls.append((a_data[begin:stop], a_scale[begin:stop].t().contiguous().t(), g,
                              d[begin:stop]))
    else:
        d = torch.empty(case.groups, case.m_max, case.n, dtype=torch.bfloat16, device="cuda")
        for g, rows in enumerate(case.group_m):
            if rows:
                stop = min(_align(rows, 4), case.m_max)
                calls.append((a_data[g, :stop], a_scale[g, :stop].t().contiguous().t(), g,
                              d[g, :stop]))
    b_pairs = inputs["b_pairs"]
    first_error = None
    for layout in range(2):
        scale_bs = []
        for w_data, w_scale in b_pairs:
            layouts = list(_scaled_mm_weight_scales(w_scale))
            scale_bs.append(layouts[min(layout, len(layouts) - 1)])

        def run(scale_bs=scale_bs):
            for a_rows, scale_a, g, out in calls:
                torch._scaled_mm(a_rows, b_pairs[g][0].t(), scale_a, scale_bs[g],
                                 out_dtype=torch.bfloat16, out=out)
            return d
        try:
            run()
            return run
        except (RuntimeError, ValueError) as error:
            first_error = first_error or error
    raise NotAvailable(f"torch._scaled_mm refused: {str(first_error).splitlines()[0][:200]}")


def prepare_torch_grouped_bf16(case, inputs) -> Callable:
    import torch

    grouped_mm = getattr(torch, "_grouped_mm", None)
    if grouped_mm is None:
        raise NotAvailable("this torch has no torch._grouped_mm")
    w_t = inputs["w"].transpose(-2, -1)          # (G, K, N) view of the (G, N, K) weights
    x = inputs["x"]
    if case.kind == KINDS[0]:
        offsets = torch.tensor([end for _, end, _ in inputs["segments"]], dtype=torch.int32,
                               device="cuda")

        def run():
            return grouped_mm(x, w_t, offs=offsets, out_dtype=torch.bfloat16)
    else:
        def run():
            return grouped_mm(x, w_t, out_dtype=torch.bfloat16)
    try:
        run()
    except (RuntimeError, ValueError, TypeError) as error:
        raise NotAvailable(f"torch._grouped_mm refused: {str(error).splitlines()[0][:200]}")
    return run


PREPARE = {
    "pyfp8gemm": prepare_pyfp8gemm,
    "deepgemm": prepare_deepgemm,
    "cublas-loop": prepare_cublas_loop,
    "torch-grouped-bf16": prepare_torch_grouped_bf16,
}


def measure(cases, providers, timer, seed=0, log=print, rounds=2) -> list[CaseResult]:
    """Per case: each provider checked once (d poisoned with NaN first), then timed in `rounds`
    interleaved rounds (provider after provider); a cell is the median of its rounds."""
    import statistics

    import torch

    results = []
    for index, case in enumerate(cases):
        result = CaseResult(case)
        try:
            inputs = make_inputs(case, seed + index)
        except Exception as error:                      # e.g. out of memory
            for key in providers:
                result.cells[key] = Cell(key, note=f"inputs: {type(error).__name__}: {error}")
            results.append(result)
            continue
        runs, times = {}, {}
        for key in providers:
            cell = result.cells[key] = Cell(key)
            try:
                run = PREPARE[key](case, inputs)
                # (the bf16 loop allocates its output; the others write into one d: poisoned)
                cell.diff, _ = checked_run(case, inputs, run, key != "torch-grouped-bf16")
                runs[key], times[key] = run, []
            except NotAvailable as reason:
                cell.note = str(reason)
            except Exception as error:                  # one failing cell must not end the run
                cell.note = f"error: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        for _ in range(rounds):
            for key, run in runs.items():
                try:
                    times[key].append(timer(run))
                except Exception as error:
                    result.cells[key].note = f"error: {type(error).__name__}: {error}"[:200]
        for key in runs:
            cell = result.cells[key]
            if times[key] and not cell.note:
                cell.time_ms = statistics.median(times[key])
        for key in providers:
            cell = result.cells[key]
            log(f"  {case.label:<36} {key:<20} "
                + (f"{cell.time_ms:.3f} ms" if cell.time_ms is not None else cell.note))
        del inputs, runs
        torch.cuda.empty_cache()
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------
# Report (pure Python)
# ---------------------------------------------------------------------------------------------


def format_report(results: list[CaseResult], providers, baseline: str = BASELINE_KEY) -> str:
    """A table: per case and column, time (ms), TFLOPS, the ratio to the baseline, and GB/s for
    the small masked cases; calc_diff flagged when >= 1e-3; the notes of cells not measured."""
    lines = []
    header = f"{'case':<36}" + "".join(f" | {key:>30}" for key in providers)
    lines.append(header)
    lines.append("-" * len(header))
    notes = []
    for result in results:
        case = result.case
        base = result.cells.get(baseline)
        base_ms = base.time_ms if base else None
        row = f"{case.label:<36}"
        for key in providers:
            cell = result.cells.get(key)
            if cell is None or cell.time_ms is None:
                row += f" | {'n/a':>30}"
                if cell is not None and cell.note:
                    notes.append(f"{case.label} / {key}: {cell.note}")
                continue
            text = f"{cell.time_ms:.3f}ms {case.flops() / cell.time_ms / 1e9:.0f}TF"
            if case.kind == KINDS[1] and case.expected_m <= SMALL_MASKED_M:
                text += f" {case.bytes() / cell.time_ms / 1e6:.0f}GB/s"
            if base_ms and key != baseline:
                text += f" x{base_ms / cell.time_ms:.2f}"
            if cell.diff is None or not cell.diff < 1e-3:
                text += " !diff"
            row += f" | {text:>30}"
        ours, theirs = result.cells.get("pyfp8gemm"), result.cells.get("deepgemm")
        if ours and theirs and ours.time_ms and theirs.time_ms:
            row += f" | vs DeepGEMM x{theirs.time_ms / ours.time_ms:.2f}"
        lines.append(row)
    if notes:
        lines.append("")
        lines.extend(notes)
    lines.append("")
    lines.append(f"ratios: {baseline}'s time / the column's (> 1 is faster); vs DeepGEMM: "
                 f"DeepGEMM's time / pyfp8gemm's; TF = TFLOPS of the valid rows; !diff: "
                 f"calc_diff vs the fp32 product >= 1e-3 (or not checked)")
    return "\n".join(lines)


def results_to_json(results: list[CaseResult]) -> list[dict]:
    return [
        {"kind": r.case.kind, "groups": r.case.groups, "expected_m": r.case.expected_m,
         "n": r.case.n, "k": r.case.k, "group_m": list(r.case.group_m), "m_max": r.case.m_max,
         "flops": r.case.flops(), "bytes": r.case.bytes(),
         "cells": {key: {"time_ms": c.time_ms, "calc_diff": c.diff, "note": c.note}
                   for key, c in r.cells.items()}}
        for r in results
    ]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def select_providers(keys) -> list[str]:
    if not keys:
        return list(PROVIDER_KEYS)
    unknown = [key for key in keys if key not in PROVIDER_KEYS]
    if unknown:
        raise ValueError(f"unknown grouped provider(s) {', '.join(unknown)}; known: "
                         f"{', '.join(PROVIDER_KEYS)}")
    return [key for key in PROVIDER_KEYS if key in keys]


def run_grouped(kind: str, *, providers=None, timing="auto", warmup_ms=25.0, rep_ms=100.0,
                seed=0, json_path=None, rounds=2) -> int:
    """Measure one grouped kind and print the table (exit status: 0, or 2 without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        print(f"python -m bench --kind {kind} needs a CUDA GPU (a Hopper GPU for pyfp8gemm)",
              file=sys.stderr)
        return 2
    from bench.timing import make_timer, resolve_timing_method

    method = resolve_timing_method(timing)
    cases = make_cases(kind, seed)
    keys = select_providers(providers)
    results = measure(cases, keys, make_timer(method, warmup_ms, rep_ms), seed=seed, rounds=rounds,
                      log=lambda text: print(text, file=sys.stderr))
    print(f"{kind} on {torch.cuda.get_device_name()} (timing: {method})")
    print(format_report(results, keys))
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"kind": kind, "timing": method, "device": torch.cuda.get_device_name(),
                       "results": results_to_json(results)}, handle, indent=1)
        print(f"\nwrote {json_path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grouped",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--providers", help=f"comma-separated: {', '.join(PROVIDER_KEYS)}")
    parser.add_argument("--timing", default="auto")
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    keys = [key.strip() for key in args.providers.split(",")] if args.providers else None
    return run_grouped(args.kind, providers=keys, timing=args.timing, warmup_ms=args.warmup_ms,
                       rep_ms=args.rep_ms, seed=args.seed, json_path=args.json)


if __name__ == "__main__":
    raise SystemExit(main())
