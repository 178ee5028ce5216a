"""`python -m bench`: FP8 GEMMs side by side, as a table, JSON and a plot.

Examples:
    python -m bench                                  # the 19 ANCHORS.md shapes, every provider
    python -m bench --set small                      # three quick shapes
    python -m bench --shape 4096x4096x7168 --shape 64x2112x7168
    python -m bench --providers pyfp8gemm,cublas-blockwise --timing profiler
    python -m bench --json bench/out/run.json --plot bench/out/run.png
    python -m bench --load bench/out/run.json --plot again.png   # no GPU needed
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
from pathlib import Path

from bench.shapes import SHAPE_SETS, parse_shape, select_shapes
from bench.timing import TIMING_METHODS

EXIT_OK, EXIT_FAILURE, EXIT_NEEDS_GPU = 0, 1, 2
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

TIMING_DESCRIPTIONS = {
    "do_bench": "triton do_bench median, L2 flushed before each run, launch overhead included",
    "events": "CUDA-event median, L2 flushed before each run, launch overhead included",
    "profiler": "torch profiler kernel time, median of a 30-call burst, L2 flushed (no host overhead)",
}


def shape_argument(text: str):
    try:
        return parse_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    from bench.providers import ALL_PROVIDERS, BASELINE_KEY

    provider_lines = "\n".join(f"  {p.key:<18} {p.description}" for p in ALL_PROVIDERS)
    set_lines = "\n".join(f"  {name:<8} {len(shapes)} shapes" for name, shapes in SHAPE_SETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="FP8 GEMM benchmark: pyfp8gemm next to cuBLAS (block-wise and per-tensor FP8, bf16) "
        "and DeepGEMM, on the same inputs, in one run.",
        epilog=f"providers:\n{provider_lines}\n\nshape sets:\n{set_lines}\n\n"
        "Measuring needs a CUDA GPU (exit status 2 without one); --help, --list and --load do not.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to measure")
    what.add_argument(
        "--kind", choices=("gemm", "m-grouped-contiguous", "m-grouped-masked",
                           "wgrad-1d1d", "k-grouped", "train-step"), default="gemm",
        help="gemm (default) or a grouped MoE kind on DeepGEMM's shapes (bench/grouped.py: "
        "takes --providers pyfp8gemm,deepgemm,cublas-loop,torch-grouped-bf16, --timing, --json)",
    )
    what.add_argument(
        "--set", dest="sets", action="append", choices=sorted(SHAPE_SETS), metavar="NAME",
        help=f"a named shape set (repeatable): {', '.join(SHAPE_SETS)}; default: anchors unless --shape is given",
    )
    what.add_argument(
        "--shape", dest="shapes", action="append", type=shape_argument, metavar="MxNxK",
        help="a shape D[M,N] = A[M,K] @ B[N,K]^T, e.g. 4096x4096x7168 (repeatable)",
    )
    what.add_argument(
        "--providers", action="append", metavar="LIST",
        help="comma-separated provider keys (see below); default: all",
    )
    what.add_argument(
        "--baseline", default=None, metavar="KEY",
        help=f"the provider ratios are taken against (default: {BASELINE_KEY})",
    )
    how = parser.add_argument_group("how to time")
    how.add_argument(
        "--timing", choices=TIMING_METHODS, default="auto",
        help="auto (do_bench if triton imports, else events), do_bench, events, or profiler (kernel time only)",
    )
    how.add_argument("--warmup-ms", type=float, default=25.0, help="warm-up per cell, ms (default 25)")
    how.add_argument("--rep-ms", type=float, default=100.0, help="timed runs per cell, ms (default 100)")
    how.add_argument("--rounds", type=int, default=3,
                     help="interleaved rounds per shape; a cell is the median of its rounds (default 3)")
    how.add_argument("--seed", type=int, default=0, help="random seed of the inputs (shape i uses seed + i)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write every number, the device, date and versions as JSON")
    out.add_argument("--plot", metavar="PATH.png", help="write a figure (needs matplotlib)")
    out.add_argument("--load", metavar="PATH", help="do not measure: re-read a --json file, print and plot it")
    out.add_argument("--list", action="store_true", help="list shape sets and providers, then exit")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def provider_keys(provider_arguments: list[str] | None) -> list[str] | None:
    """['a,b', 'c'] -> ['a', 'b', 'c']; None stays None (all providers)."""
    if not provider_arguments:
        return None
    return [key.strip() for argument in provider_arguments for key in argument.split(",") if key.strip()]


def list_everything() -> str:
    from bench.providers import ALL_PROVIDERS

    lines = ["Shape sets:"]
    for name, shapes in SHAPE_SETS.items():
        lines.append(f"  {name} ({len(shapes)}): " + " ".join(shape.label for shape in shapes))
    lines.append("Providers:")
    for provider in ALL_PROVIDERS:
        reason = provider.unavailable_reason()
        state = "available" if reason is None else f"unavailable ({reason})"
        lines.append(f"  {provider.key:<18} {provider.name:<18} {state}")
    return "\n".join(lines)


def _version(distribution: str, module: str | None = None) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except Exception:
        pass
    if module:
        try:
            imported = __import__(module)
            return str(getattr(imported, "__version__", "installed"))
        except Exception:
            return None
    return None


def _source_hash() -> str | None:
    """sha256 (first 12 hex digits) of pyfp8gemm's sources as they ran: unlike the git commit,
    true even where the checkout's .git is stale or absent (e.g. a copied working tree)."""
    try:
        import pyfp8gemm
        from pyfp8gemm.cache.store import source_hash

        return source_hash(pyfp8gemm)[:12]
    except Exception:
        return None


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPOSITORY_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPOSITORY_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:
        return None


def collect_run_info(args, timing_method: str, baseline: str, shapes, providers) -> dict:
    import torch

    properties = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": {
            "name": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "sm_count": properties.multi_processor_count,
            "memory_gib": round(properties.total_memory / 2**30, 1),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda (torch)": torch.version.cuda,
            "triton": _version("triton", "triton"),
            "pyfp8gemm": _version("pyfp8gemm", "pyfp8gemm"),
            "pyfp8gemm commit": _git_commit(),
            "pyfp8gemm sources": _source_hash(),
            "deep_gemm": _version("deep_gemm", "deep_gemm"),
        },
        "timing": timing_method,
        "timing_description": TIMING_DESCRIPTIONS[timing_method],
        "warmup_ms": args.warmup_ms,
        "rep_ms": args.rep_ms,
        "rounds": args.rounds,
        "seed": args.seed,
        "baseline": baseline,
        "shape_sets": args.sets or ([] if args.shapes else ["anchors"]),
        "shapes": [shape.label for shape in shapes],
        "providers": [provider.key for provider in providers],
        "command": "python -m bench " + " ".join(sys.argv[1:]),
    }


def plot_title(run_info: dict) -> str:
    device = run_info.get("device", {}).get("name", "?")
    date = str(run_info.get("date", "?"))[:10]
    return f"FP8 GEMM, bf16 out — {device}, {date}\ntiming: {run_info.get('timing_description', '')}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.list:
        print(list_everything())
        return EXIT_OK
    if args.kind in ("wgrad-1d1d", "k-grouped", "train-step"):   # FP8 training: bench/training.py
        from bench.training import run_training

        return run_training(args.kind, provider_keys(args.providers), args.timing, args.warmup_ms,
                            args.rep_ms, args.seed, args.json, rounds=args.rounds)
    if args.kind != "gemm":
        from bench.grouped import run_grouped

        return run_grouped(args.kind, providers=provider_keys(args.providers), timing=args.timing,
                           warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, seed=args.seed,
                           json_path=args.json, rounds=args.rounds)

    from bench.providers import BASELINE_KEY, PROVIDER_NAMES, PROVIDERS_BY_KEY, select_providers
    from bench.report import format_report
    from bench.results import load_json, write_json

    if args.baseline is not None and args.baseline not in PROVIDERS_BY_KEY:
        parser.error(f"--baseline {args.baseline!r} is not a provider; known: {', '.join(PROVIDERS_BY_KEY)}")

    if args.load:
        try:
            run_info, results, saved_baseline, saved_names = load_json(args.load)
        except FileNotFoundError:
            print(f"python -m bench --load: no such file: {args.load}", file=sys.stderr)
            return EXIT_FAILURE
        except (OSError, ValueError, KeyError, TypeError) as error:   # unreadable, not JSON, not ours
            print(f"python -m bench --load {args.load}: cannot read it as a saved run "
                  f"(a --json file of python -m bench): {type(error).__name__}: {error}",
                  file=sys.stderr)
            return EXIT_FAILURE
        baseline = args.baseline or saved_baseline
        provider_names = {**saved_names, **PROVIDER_NAMES}
    else:
        try:
            shapes = select_shapes(args.sets, args.shapes)
            providers = select_providers(provider_keys(args.providers))
        except ValueError as error:
            parser.error(str(error))
        baseline = args.baseline or BASELINE_KEY

        import torch

        if not torch.cuda.is_available():
            print(
                "python -m bench needs a CUDA GPU (an NVIDIA Hopper GPU for pyfp8gemm): torch sees none here "
                f"(torch {torch.__version__}). --help, --list and --load work without one.",
                file=sys.stderr,
            )
            return EXIT_NEEDS_GPU

        from bench.runner import run_benchmark
        from bench.timing import make_timer, resolve_timing_method

        try:
            timing_method = resolve_timing_method(args.timing)
        except RuntimeError as error:
            parser.error(str(error))
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) != (9, 0):
            print(f"warning: this GPU is sm_{major}{minor}; pyfp8gemm and cuBLAS block-wise FP8 target sm_90 "
                  "(Hopper): expect n/a or error cells.", file=sys.stderr)
        run_info = collect_run_info(args, timing_method, baseline, shapes, providers)
        timer = make_timer(timing_method, args.warmup_ms, args.rep_ms)
        results = run_benchmark(shapes, providers, timer, seed=args.seed,
                                show_progress=not args.no_progress, rounds=args.rounds)
        provider_names = PROVIDER_NAMES

    print(format_report(run_info, results, baseline, provider_names))

    status = EXIT_OK
    if args.json:
        write_json(args.json, run_info, results, baseline, provider_names)
        print(f"\nwrote {args.json}")
    if args.plot:
        from bench.plot import matplotlib_is_available, plot_results

        if matplotlib_is_available():
            plot_results(args.plot, results, baseline, provider_names, title=plot_title(run_info))
            print(f"wrote {args.plot}")
        else:
            print("--plot needs matplotlib (pip install matplotlib); no figure written", file=sys.stderr)
            status = EXIT_FAILURE
    return status
