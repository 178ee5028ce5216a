"""Compare the kernels two commits build: registers, spills, SASS instruction counts, K loops.

    python scripts/compare_kernels.py BASE [HEAD] [--jobs N] [--out FILE]

Each commit is checked out into a temporary git worktree and compiles every kernel its
heuristic can launch (no GPU needed) into a temporary cache directory, in parallel processes.
Per kernel (matched by name) the table shows registers, spill bytes, the SASS instruction count
of the whole kernel and of each K loop (an innermost backward-branch loop that issues QGMMA),
and whether the SASS is identical apart from the kernel's name. HEAD defaults to the work tree
as it is (uncommitted changes included).

A commit's kernels are listed by `pyfp8gemm.host.kernels.all_kernel_specs()` where it exists,
else by the older `heuristics.all_configs()` + `launch.kernel_spec()`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent

# Run inside a checkout (cwd = its root): compile its kernels, print one JSON object per kernel.
_WORKER = r'''
import concurrent.futures, hashlib, json, multiprocessing, os, re, sys
sys.path.insert(0, os.getcwd())

def specs():
    only = set(filter(None, os.environ.get("COMPARE_ONLY", "").split(",")))
    try:
        from pyfp8gemm.host.kernels import all_kernel_specs
        return [s for s in all_kernel_specs() if not only or s.name in only]
    except ImportError:
        from pyfp8gemm.host.heuristics import all_configs
        from pyfp8gemm.host.launch import kernel_spec
        seen, out = set(), []
        for cfg in all_configs():
            cfg = cfg.kernel_config
            if cfg.name not in seen:
                seen.add(cfg.name)
                out.append(kernel_spec(cfg))
        return out

INSTR = re.compile(r"/\*([0-9a-fA-F]{4,})\*/\s+(.*?);")
BRA = re.compile(r"^(?:@!?U?P[T0-9]+\s+)?BRA\b.*?0x([0-9a-fA-F]+)")

def analyse(i):
    from pyfp8gemm.cache import toolchain
    from pyfp8gemm.cache.compiler import compile_kernel
    spec = specs()[i]
    kernel = compile_kernel(spec)
    text = toolchain.sass(kernel.cubin)
    usage = toolchain.resource_usage(kernel.cubin).get(kernel.name, {})
    instrs = []                       # (offset, text) with the kernel name blanked
    for line in text.splitlines():
        m = INSTR.search(line)
        if m:
            instrs.append((int(m.group(1), 16), m.group(2).replace(kernel.name, "KERNEL").strip()))
    offsets = [o for o, _ in instrs]
    loops = []
    for o, t in instrs:
        b = BRA.match(t)
        if b and int(b.group(1), 16) <= o:
            loops.append((int(b.group(1), 16), o))
    def opcode(t):
        words = t.split()
        return words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    def has_mma(lo, hi):
        return any(lo <= o <= hi and opcode(t).startswith("QGMMA") for o, t in instrs)
    mma_loops = [(lo, hi) for lo, hi in loops if has_mma(lo, hi)]
    inner = [(lo, hi) for lo, hi in mma_loops
             if not any((lo2, hi2) != (lo, hi) and lo <= lo2 and hi2 <= hi for lo2, hi2 in mma_loops)]
    k_loops = sorted(sum(1 for o in offsets if lo <= o <= hi) for lo, hi in set(inner))
    body = "\n".join(t for _, t in instrs)
    return dict(name=kernel.name, registers=usage.get("registers"),
                spills=usage.get("spill_store_bytes", 0) + usage.get("spill_load_bytes", 0),
                instructions=len(instrs), k_loops=k_loops,
                sass_sha=hashlib.sha256(body.encode()).hexdigest()[:16])

if __name__ == "__main__":
    n = len(specs())
    jobs = int(sys.argv[1])
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        for row in pool.map(analyse, range(n)):
            print(json.dumps(row), flush=True)
'''


def kernels_of(rev: str | None, jobs: int, only=()) -> dict[str, dict]:
    """Compile every kernel of `rev` (None: the work tree; `only`: just these names) and
    return name -> facts."""
    with tempfile.TemporaryDirectory() as tmp:
        if rev is None:
            root = _REPO
        else:
            root = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(_REPO), "worktree", "add", "--detach", str(root), rev],
                           check=True, capture_output=True)
        try:
            env = dict(os.environ, PYFP8GEMM_CACHE_DIR=str(Path(tmp) / "cache"),
                       PYTHONPATH=str(root), COMPARE_ONLY=",".join(only))
            env.pop("PYFP8GEMM_DISABLE_DISK_CACHE", None)
            worker = Path(tmp) / "compare_worker.py"     # spawned workers re-import it
            worker.write_text(_WORKER)
            run = subprocess.run([sys.executable, str(worker), str(jobs)], cwd=root, env=env,
                                 capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"compiling {rev or 'the work tree'} failed:\n{run.stderr}")
            out = run.stdout
        finally:
            if rev is not None:
                subprocess.run(["git", "-C", str(_REPO), "worktree", "remove", "--force",
                                str(root)], capture_output=True)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {row["name"]: row for row in rows}


def compare(base: dict, head: dict) -> tuple[str, bool]:
    lines = [f"{'kernel':58} {'regs':>9} {'spill':>7} {'instr':>11} {'K loops':>21} SASS"]
    same_everywhere = True
    for name in sorted(set(base) | set(head)):
        b, h = base.get(name), head.get(name)
        if b is None or h is None:
            lines.append(f"{name:58} {'only in ' + ('head' if b is None else 'base')}")
            same_everywhere = False
            continue
        same = b["sass_sha"] == h["sass_sha"]
        same_everywhere &= same
        loops = f"{b['k_loops']}->{h['k_loops']}" if b["k_loops"] != h["k_loops"] else str(h["k_loops"])
        lines.append(f"{name:58} {b['registers']:>4}/{h['registers']:<4} {b['spills']:>3}/{h['spills']:<3} "
                     f"{b['instructions']:>5}/{h['instructions']:<5} {loops:>21} "
                     f"{'same' if same else 'DIFFERS'}")
    lines.append(f"{len(base)} base kernels, {len(head)} head kernels; "
                 + ("SASS identical for every kernel" if same_everywhere else "some differ"))
    return "\n".join(lines), same_everywhere


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("head", nargs="?")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--out", help="also write both commits' facts as JSON here")
    parser.add_argument("--base-only", action="store_true",
                        help="compile BASE only and write its facts to --out (for --base-json)")
    parser.add_argument("--base-json", help="read BASE's facts from this JSON (skip compiling)")
    parser.add_argument("--common", action="store_true",
                        help="compile only HEAD's kernels whose names BASE has")
    args = parser.parse_args()
    base = (json.loads(Path(args.base_json).read_text())["base"] if args.base_json
            else kernels_of(args.base, args.jobs))
    if args.base_only:
        Path(args.out).write_text(json.dumps(dict(base=base), indent=1))
        return 0
    head = kernels_of(args.head, args.jobs, sorted(base) if args.common else ())
    table, _ = compare(base, head)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(base=base, head=head), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
