"""`python -m pyfp8gemm`: the environment report, then (on a Hopper GPU) the self-check.

    python -m pyfp8gemm                  report; self-check on Hopper; exit code = its result
    python -m pyfp8gemm --no-selfcheck   report only
    python -m pyfp8gemm inspect [--json] compile every kernel, show registers/spills/SASS
                                         (pyfp8gemm.inspect)
    python -m pyfp8gemm warmup --shapes N,K ... [--m-range LO:HI] [--jobs J] [--num-sms S]
                                         compile ahead of time what those shapes need
    python -m pyfp8gemm cache info|export FILE|import FILE|clear
                                         the kernel cache (docs/CACHE.md)
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    import pyfp8gemm

    parser = argparse.ArgumentParser(
        prog="python -m pyfp8gemm",
        description="Report what pyfp8gemm finds (GPU, driver, toolchain, cache) and, on a "
        "Hopper GPU, run its self-check. Without a Hopper GPU it says so and exits 0.",
    )
    parser.add_argument("--version", action="version", version=f"pyfp8gemm {pyfp8gemm.__version__}")
    parser.add_argument("--no-selfcheck", action="store_true",
                        help="print the report only, even on a Hopper GPU")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Its own options (--json, -h) belong to pyfp8gemm.inspect: pass them through untouched.
    commands.add_parser("inspect", add_help=False,
                        help="compile every kernel and show registers/spills/SASS "
                             "(no GPU needed; options: see `inspect --help`)")

    warm = commands.add_parser(
        "warmup", help="compile ahead of time every kernel the heuristic can pick for given "
                       "weight shapes (no GPU needed)",
        description="Compile into the kernel cache every kernel the heuristic can pick for "
                    "the weight shapes and token counts given, in parallel processes.")
    warm.add_argument("--shapes", nargs="+", metavar="N,K", default=None,
                      help="weight shapes (N, K) = (out_features, in_features), e.g. "
                           "2112,7168 7168,2048")
    warm.add_argument("--m-range", default=f"1:{16384}", metavar="LO:HI",
                      help="token counts M to plan for, inclusive (default 1:16384; 'MAX' "
                           "means 1:MAX)")
    warm.add_argument("--num-sms", type=int, default=132,
                      help="SMs of the target GPU the heuristic plans for (default 132: "
                           "H100/H200 SXM)")
    warm.add_argument("--jobs", "-j", type=int, default=None,
                      help="parallel compile processes (default: the CPU count)")
    warm.add_argument("--all", action="store_true",
                      help="every kernel that serves any shape (with or without --shapes; the "
                           "grouped GEMMs' kernels for each (N, G) need --shapes and --groups)")
    warm.add_argument("--groups", nargs="+", type=int, default=(), metavar="G",
                      help="also the MoE grouped GEMMs for G experts per GPU (M = rows per "
                           "expert)")
    warm.add_argument("--wgrad", action="store_true",
                      help="also the weight-gradient (1D1D) GEMMs of training (M = tokens)")
    warm.add_argument("--json", action="store_true", help="print the summary as JSON")

    cache = commands.add_parser("cache", help="the kernel cache: info, export, import, clear",
                                description="Inspect, ship or clear the kernel cache "
                                            "(docs/CACHE.md).")
    actions = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="directory, whether it is trusted and usable, "
                                           "entries and size")
    info.add_argument("--json", action="store_true")
    export = actions.add_parser("export", help="write the cached kernels into a portable "
                                               "archive (.tar.gz)")
    export.add_argument("file")
    export.add_argument("--only-current", action="store_true",
                        help="only the kernels built for this installation's toolchain")
    imp = actions.add_parser("import", help="verify an archive entry by entry and add what "
                                            "this installation can use")
    imp.add_argument("file")
    actions.add_parser("clear", help="delete every cached kernel")
    return parser


def _warmup(args, parser) -> int:
    # (`from pyfp8gemm import warmup` would give the function: pyfp8gemm.warmup is exported)
    from pyfp8gemm.warmup import parse_m_range, parse_shapes, warmup

    if not args.shapes and not args.all:
        parser.error("warmup needs --shapes N,K [N,K ...] or --all")
    try:
        shapes = parse_shapes(args.shapes) if args.shapes else None
        m_range = parse_m_range(args.m_range)
    except (TypeError, ValueError) as error:
        parser.error(f"warmup: {error}")
    try:
        result = warmup(shapes, m_range, num_sms=args.num_sms, jobs=args.jobs,
                        all_kernels=args.all, progress=not args.json, groups=args.groups,
                        wgrad=args.wgrad)
    except (RuntimeError, ValueError) as error:
        print(f"python -m pyfp8gemm warmup: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.__dict__, indent=1))
    else:
        print(result)
    return 1 if result.failed else 0


def _cache(args) -> int:
    from pyfp8gemm.cache import store

    if args.action == "info":
        info = store.status()
        if args.json:
            print(json.dumps(info, indent=1))
        else:
            print(f"directory  {info['directory']} (set by {info['set_by']})")
            print(f"status     {store.describe_status(info)}")
        return 0
    from pyfp8gemm.cache import archive

    try:
        if args.action == "export":
            result = archive.export_cache(args.file, only_current=args.only_current)
            note = f" ({result.skipped} built for other installations left out)" \
                if result.skipped else ""
            print(f"exported {result.entries} kernels to {result.path} "
                  f"({result.bytes / 2**20:.1f} MiB){note}")
            return 0
        if args.action == "import":
            result = archive.import_cache(args.file)
            print(result)
            return 1 if result.refused else 0
        if args.action == "clear":
            disk = None if store.disk_cache_disabled() else store.disk_store()
            if disk is None:
                print(f"python -m pyfp8gemm cache clear: the disk cache is off "
                      f"({store.describe_status()})", file=sys.stderr)
                return 1
            print(f"removed {disk.clear()} kernels from {disk.root}")
            return 0
    except (archive.ArchiveError, RuntimeError, OSError) as error:
        print(f"python -m pyfp8gemm cache {args.action}: {error}", file=sys.stderr)
        return 1
    raise AssertionError(args.action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    if args.command == "inspect":
        from pyfp8gemm.host.report import optional_import

        inspect = optional_import("pyfp8gemm.inspect")
        if inspect is None:
            print("python -m pyfp8gemm inspect: not available in this version "
                  "(pyfp8gemm.inspect is missing)", file=sys.stderr)
            return 1
        exit_code = inspect.main(rest)
        return 0 if exit_code is None else int(exit_code)

    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "warmup":
        return _warmup(args, parser)
    if args.command == "cache":
        return _cache(args)

    from pyfp8gemm.host import report

    return report.run(selfcheck=not args.no_selfcheck)


if __name__ == "__main__":
    sys.exit(main())
