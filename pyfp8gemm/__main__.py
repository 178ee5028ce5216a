"""`python -m pyfp8gemm`: the environment report, then (on a Hopper GPU) the self-check.

    python -m pyfp8gemm                  report; self-check on Hopper; exit code = its result
    python -m pyfp8gemm --no-selfcheck   report only
    python -m pyfp8gemm inspect [--json] what the kernel cache holds (pyfp8gemm.inspect)
"""

from __future__ import annotations

import argparse
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
                        help="show the kernel cache (options: see `inspect --help`)")
    return parser


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

    from pyfp8gemm.host import report

    return report.run(selfcheck=not args.no_selfcheck)


if __name__ == "__main__":
    sys.exit(main())
