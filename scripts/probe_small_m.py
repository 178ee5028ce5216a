"""Small-M streaming probes (issue 22 item 1): how fast can B (N, K) e4m3 be read, once, in the
tiles and order a small-M GEMM reads it, through each load path, with no math?

    python scripts/probe_small_m.py                 # on the GPU machine (~1.5-3 min)
    python scripts/probe_small_m.py --dry-run       # any machine: compile, check, print the plan
    python scripts/probe_small_m.py --fake-driver   # any machine: the whole host path against a
                                                    # do-nothing libcuda (numbers meaningless)
    options: --quick (anchor shape, fewer variants), --reps N, --budget-s S, --only GROUP ...

On the device machine: `source scripts/device_env.sh && python3 scripts/probe_small_m.py`.

What runs (kernels: scripts/probe_small_m_kernels.py, compiled here in parallel processes with
numba-cuda -> PTX sm_90a -> the compiler's post-edits -> ptxas; 0 spills checked):
  roof      torch `dst.copy_(src)` of B's bytes (read + write) and a torch int32 sum over B
            (read only): what the memory system gives to well-tuned torch kernels;
  tma       the GEMM's load path: one producer thread, a ring of `stages` slots of one
            128 B x BLOCK_N box (128B swizzle), 4 consumer warps that wait and release:
            BLOCK_N 64/128/256 x stages 4/8/16 (capped by shared memory), plus the GEMM's own
            ring at 64x7168x16384 (BLOCK_N 64, 13 stages, A's 64x128 box in every slot) with
            run-time sizes and with the sizes compiled in;
  tma_box   other boxes: two 128 B boxes per slot, a 256 B x 64 box (no swizzle), a 3-D box of
            4 K blocks x 64 rows (128B swizzle), no swizzle, L2 promotion none / 128B;
  cpasync   the ring filled by 128 / 256 loader threads with 16-byte cp.async.cg (+ an
            L2::256B hint), and per-thread commit groups (cp.async.wait_group stages-1);
  vector    512 threads, U = 4/8/16 16-byte loads in flight per thread (ld.global.nc.v4,
            ld.global.v4, ld.global.nc.L1::no_allocate.L2::256B.v4), summed, checked.
Each at 56, 78, 104 CTAs and one per SM (the SM count, from torch), one CTA per SM (every launch
asks for >= 120 KB of shared memory), under two schedules: `tiles` (the GEMM's: CTA c reads
tiles c, c + grid, ... over all of K; CTAs past the tile count idle) and `bal` (the tiles' K
units cut into equal contiguous ranges: every CTA reads the same bytes). Shapes (N, K):
7168 x 16384 (the 64x7168x16384 anchor), 4096 x 7168, 24576 x 1536.

Timing: per variant one checked launch (status word: no barrier wait timed out; vector loads:
the sum of every thread's sum equals B's), 2 warm-ups, then `reps` launches each after an L2
flush (a 256 MB buffer zeroed), CUDA events around each launch alone; the median in GB/s of
N * K bytes (B read once; the copy roof also shows read + write). Per-CTA %globaltimer spans
give `bal%` (mean CTA busy time / kernel span) in the JSON.

Isolation: the GPU work runs in one child process per group, one after another, each with a
share of the time budget; a child that faults or hangs loses only its group. Results are
written after every variant. $OUT/probe_small_m.json (and .txt) when $OUT is set.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

START = time.time()
KB = 1024
SMEM_LIMIT = 232448 - 1024          # opt-in dynamic smem per block minus the 1 KB static part
SMEM_FLOOR = 120 * KB               # > half an SM's smem: one CTA per SM
FLUSH_BYTES = 256 << 20
ANCHOR = (7168, 16384)
SHAPES = [ANCHOR, (4096, 7168), (24576, 1536)]
MODES = {0: "tiles", 1: "bal"}
GROUPS = ["roof", "tma", "tma_box", "cpasync", "vector"]
A_ROWS = 64


# ---------------------------------------------------------------------------------------------
# The plan: variants per group
# ---------------------------------------------------------------------------------------------

def tma(label, block_n, stages, box_k=128, boxes=1, dims=2, a_rows=0, swizzle=128,
        l2="256B", kernel="probe_tma_stream"):
    return dict(path="tma", kernel=kernel, label=label, block_n=block_n, stages=stages,
                box_k=box_k, boxes=boxes, dims=dims, a_rows=a_rows, swizzle=swizzle, l2=l2)


def plan(quick=False):
    """{group: [variant, ...]}; a variant holds everything but the shape, grid and mode."""
    groups = {"roof": [dict(path="roof", kernel=None, label="torch copy_ (GB/s of B read; "
                                                          "x2 = traffic)", op="copy"),
                       dict(path="roof", kernel=None, label="torch int32 sum (read)",
                            op="sum")]}
    t = []
    # stages 4 / 8 / 16 where shared memory allows, else the most that fit; 24 at BLOCK_N 64
    for bn, stage_list in ((64, (4, 8, 16, 24)), (128, (4, 8, 13)), (256, (4, 6))):
        for s in stage_list:
            t.append(tma(f"tma {bn}x128B s{s}", bn, s))
    t.append(tma("tma 64x128B s13 (GEMM ring, B only)", 64, 13))
    t.append(tma("tma 64x128B s13 +A64 (GEMM ring)", 64, 13, a_rows=A_ROWS))
    t.append(tma("tma 64x128B s13 +A64 fixed consts", 64, 13, a_rows=A_ROWS,
                 kernel="probe_tma_stream_fixed"))
    groups["tma"] = t
    groups["tma_box"] = [
        tma("tma 64x(2x128B) s4", 64, 4, boxes=2),
        tma("tma 64x(2x128B) s8", 64, 8, boxes=2),
        tma("tma 128x(2x128B) s4", 128, 4, boxes=2),
        tma("tma 64x256B noswz s4", 64, 4, box_k=256, swizzle=0),
        tma("tma 64x256B noswz s8", 64, 8, box_k=256, swizzle=0),
        tma("tma3d 64x(4x128B) s2", 64, 2, box_k=512, dims=3),
        tma("tma3d 64x(4x128B) s4", 64, 4, box_k=512, dims=3),
        tma("tma3d 64x(4x128B) s6", 64, 6, box_k=512, dims=3),
        tma("tma 64x128B noswz s8", 64, 8, swizzle=0),
        tma("tma 64x128B s8 L2prom none", 64, 8, l2="none"),
        tma("tma 64x128B s8 L2prom 128B", 64, 8, l2="128B"),
    ]
    c = []
    for bn, stage_list in ((64, (4, 8, 16)), (128, (4, 8))):
        for s in stage_list:
            c.append(dict(path="cpasync", kernel="probe_cpasync_ring_w128", loaders=128,
                          label=f"cp.async ring w128 {bn} s{s}", block_n=bn, stages=s))
    for bn in (64, 128):
        c.append(dict(path="cpasync", kernel="probe_cpasync_ring_w256", loaders=256,
                      label=f"cp.async ring w256 {bn} s8", block_n=bn, stages=8))
    c.append(dict(path="cpasync", kernel="probe_cpasync_ring_w128_l2h", loaders=128,
                  label="cp.async ring w128 L2::256B 64 s8", block_n=64, stages=8))
    for s in (4, 8, 16):
        c.append(dict(path="cpasync", kernel="probe_cpasync_groups", loaders=256,
                      label=f"cp.async groups w256 64 s{s}", block_n=64, stages=s))
    groups["cpasync"] = c
    v = []
    for u in (4, 8, 16):
        v.append(dict(path="vector", kernel=f"probe_vector_u{u}_nc", unroll=u, flavor="nc",
                      label=f"ld.nc.v4 x{u} 64", block_n=64))
    v.append(dict(path="vector", kernel="probe_vector_u8_nc", unroll=8, flavor="nc",
                  label="ld.nc.v4 x8 128", block_n=128))
    v.append(dict(path="vector", kernel="probe_vector_u8_plain", unroll=8, flavor="plain",
                  label="ld.v4 x8 64", block_n=64))
    v.append(dict(path="vector", kernel="probe_vector_u8_nc_na256", unroll=8,
                  flavor="nc_na256", label="ld.nc.na.L2::256B.v4 x8 64", block_n=64))
    groups["vector"] = v
    if quick:
        keep = {"tma 64x128B s8", "tma 64x128B s13 +A64 (GEMM ring)", "tma 128x128B s8",
                "tma 64x(2x128B) s8", "tma3d 64x(4x128B) s4", "cp.async ring w128 64 s8",
                "cp.async groups w256 64 s8", "ld.nc.v4 x8 64", "ld.nc.v4 x16 64"}
        groups = {g: [x for x in vs if x["path"] == "roof" or x["label"] in keep]
                  for g, vs in groups.items()}
    return groups


def slot_bytes(v):
    """Bytes of one ring slot (TMA, cp.async)."""
    if v["path"] == "tma":
        return (v["block_n"] + v["a_rows"]) * v["box_k"] * v["boxes"]
    return v["block_n"] * 128


def kstep(v):
    """Bytes of K per work unit (one ring slot, or one 128-byte K block)."""
    return v["box_k"] * v["boxes"] if v["path"] == "tma" else 128


def smem_needed(v):
    if v["path"] in ("tma", "cpasync"):
        barriers = 0 if v["kernel"] == "probe_cpasync_groups" else 16 * v["stages"]
        return v["stages"] * slot_bytes(v) + barriers
    return 0


def in_flight_bytes(v):
    """B bytes a CTA can have requested and not yet received."""
    if v["path"] == "tma":
        return v["stages"] * v["block_n"] * v["box_k"] * v["boxes"]
    if v["path"] == "cpasync":
        return v["stages"] * v["block_n"] * 128
    if v["path"] == "vector":
        return 512 * v["unroll"] * 16
    return 0


def invalid_reason(v, n, k):
    """Why the variant cannot run at (n, k), or None."""
    if v["path"] == "roof":
        return None
    if n % v["block_n"]:
        return f"N % {v['block_n']}"
    if k % kstep(v):
        return f"K % {kstep(v)}"
    if smem_needed(v) > SMEM_LIMIT:
        return f"smem {smem_needed(v)} > {SMEM_LIMIT}"
    if v["path"] == "cpasync" and (v["block_n"] * 8) % v["loaders"]:
        return "block_n * 8 % loaders"
    if v["path"] == "cpasync" and v["kernel"] == "probe_cpasync_groups" and \
            v["stages"] not in (2, 4, 8, 16):
        return "stages not in 2/4/8/16"
    if v["path"] == "vector" and (v["block_n"] * 8) % 512:
        return "block_n * 8 % 512"
    if v["path"] == "tma":
        if v["a_rows"] and (v["box_k"] != 128 or v["dims"] != 2):
            return "A box only with 2-D 128 B boxes"
        if v["swizzle"] == 128 and v["dims"] == 2 and v["box_k"] != 128:
            return "128B swizzle needs a 128 B inner box"
        if v["block_n"] > 256 or (v["dims"] == 3 and v["box_k"] // 128 > 256):
            return "box dimension > 256"
        if v["kernel"] == "probe_tma_stream_fixed" and (v["block_n"], v["stages"], v["a_rows"],
                                                        v["box_k"], v["boxes"]) != \
                (64, 13, A_ROWS, 128, 1):
            return "fixed kernel: only its compiled-in sizes"
    return None


def ctas_list(sms):
    return sorted({c for c in (56, 78, 104, sms) if c <= sms})


# ---------------------------------------------------------------------------------------------
# Compiling (parent, parallel processes)
# ---------------------------------------------------------------------------------------------

def _build_worker(name):
    sys.path[:0] = [p for p in (HERE, ROOT) if p not in sys.path]
    import probe_small_m_kernels as kernels
    name, cubin, usage, seconds = kernels.build_one(name)
    factory, kwargs = kernels.FACTORIES[name]
    k = factory(**kwargs)
    params = [("tmap" if i in k["tensormap_params"] else str(t)) for i, t in
              enumerate(k["signature"])]
    return dict(name=name, cubin=cubin, usage=usage, seconds=seconds, threads=k["threads"],
                params=params)


def compile_all(names, cubin_dir, jobs):
    """Compile the kernels in parallel; write DIR/NAME.cubin and DIR/manifest.json."""
    start = time.time()
    ctx = multiprocessing.get_context("spawn")
    manifest = {}
    with concurrent.futures.ProcessPoolExecutor(min(jobs, len(names)), mp_context=ctx) as pool:
        for r in pool.map(_build_worker, names):
            with open(os.path.join(cubin_dir, r["name"] + ".cubin"), "wb") as f:
                f.write(r["cubin"])
            manifest[r["name"]] = {k: r[k] for k in ("usage", "seconds", "threads", "params")}
    with open(os.path.join(cubin_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"compiled {len(names)} kernels in {time.time() - start:.1f} s ({jobs} jobs):")
    bad = []
    for name in names:
        u = manifest[name]["usage"]
        spills = u.get("spill_store_bytes", 0) + u.get("spill_load_bytes", 0)
        print(f"  {name:32s} {manifest[name]['threads']:4d} thr {u.get('registers', '?'):>4} "
              f"regs  spills {spills}  local {u.get('local_bytes', 0)}  "
              f"({manifest[name]['seconds']} s)")
        if spills or u.get("local_bytes", 0):
            bad.append(name)
    if bad:
        print(f"WARNING: spills / local memory in {bad}")
    return manifest


# ---------------------------------------------------------------------------------------------
# Parameters (shared by the dry run and the child)
# ---------------------------------------------------------------------------------------------

def param_values(v, kernel_params, ptr, maps, n, k, mode, check=0):
    """The kernel's parameter list (ParamBlock values) for variant v at (n, k, mode); `check`
    = 1: the validation launch (TMA and cp.async ring consumers add up what they received).
    `ptr`: dict of device pointers (b, status, times, out); `maps`: (tmap_b, tmap_a)."""
    from pyfp8gemm.host import driver
    i32 = lambda x: (ctypes.c_int32, int(x))       # noqa: E731
    u64 = lambda x: (ctypes.c_uint64, int(x))      # noqa: E731
    if v["path"] == "tma":
        values = [maps[0], maps[1], u64(ptr["status"]), u64(ptr["times"]), i32(n), i32(k),
                  i32(v["block_n"]), i32(v["box_k"]), i32(v["boxes"]), i32(v["stages"]),
                  i32(v["a_rows"]), i32(v["dims"]), i32(mode), i32(check), u64(ptr["out"])]
    elif v["kernel"] == "probe_cpasync_groups":
        values = [u64(ptr["b"]), u64(ptr["status"]), u64(ptr["times"]), i32(n), i32(k),
                  i32(v["block_n"]), i32(v["stages"]), i32(mode)]
    elif v["path"] == "cpasync":
        values = [u64(ptr["b"]), u64(ptr["status"]), u64(ptr["times"]), i32(n), i32(k),
                  i32(v["block_n"]), i32(v["stages"]), i32(mode), i32(check), u64(ptr["out"])]
    else:
        values = [u64(ptr["b"]), u64(ptr["out"]), u64(ptr["status"]), u64(ptr["times"]),
                  i32(n), i32(k), i32(v["block_n"]), i32(mode), (ctypes.c_uint32, 0)]
    # The list must match the compiled signature: tensor maps where the kernel takes them,
    # 4-byte scalars for int32/uint32, 8-byte ones for uint64.
    if len(values) != len(kernel_params):
        raise ValueError(f"{v['kernel']}: {len(values)} values for {len(kernel_params)} params")
    for value, kind in zip(values, kernel_params):
        is_map = isinstance(value, driver.cu.CUtensorMap)
        if (kind == "tmap") != is_map or (not is_map and ctypes.sizeof(value[0]) !=
                                          (8 if kind in ("uint64", "int64") else 4)):
            raise ValueError(f"{v['kernel']}: parameter kinds {kernel_params} vs values")
    return values


def launch_smem(v):
    return max(smem_needed(v), SMEM_FLOOR)


# ---------------------------------------------------------------------------------------------
# The child: one group's measurements on the GPU
# ---------------------------------------------------------------------------------------------

_PROMOTION = {"none": "CU_TENSOR_MAP_L2_PROMOTION_NONE", "64B": "CU_TENSOR_MAP_L2_PROMOTION_L2_64B",
              "128B": "CU_TENSOR_MAP_L2_PROMOTION_L2_128B",
              "256B": "CU_TENSOR_MAP_L2_PROMOTION_L2_256B"}


def tensormap_2d_promotion(address, inner, outer, stride, box_inner, box_outer, swizzle, l2):
    """driver.tensormap_2d with another L2 promotion (the library's is 256B)."""
    from pyfp8gemm.host import driver
    cu = driver.cu
    u64, u32 = cu.cuuint64_t, cu.cuuint32_t
    return driver.check(cu.cuTensorMapEncodeTiled(
        driver.DTYPE_FP8, 2, address, [u64(inner), u64(outer)], [u64(stride)],
        [u32(box_inner), u32(box_outer)], [u32(1), u32(1)],
        cu.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE, driver._SWIZZLE[swizzle],
        getattr(cu.CUtensorMapL2promotion, _PROMOTION[l2]),
        cu.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE), "cuTensorMapEncodeTiled")


def tensormaps(v, b_ptr, a_ptr, n, k):
    from pyfp8gemm.host import driver
    if v["dims"] == 3:
        tb = driver.tensormap_3d(driver.DTYPE_FP8, b_ptr, (128, k // 128, n), (128, k),
                                 (128, v["box_k"] // 128, v["block_n"]), v["swizzle"])
    elif v["l2"] != "256B":
        tb = tensormap_2d_promotion(b_ptr, k, n, k, v["box_k"], v["block_n"], v["swizzle"],
                                    v["l2"])
    else:
        tb = driver.tensormap_2d(driver.DTYPE_FP8, b_ptr, k, n, k, v["box_k"], v["block_n"],
                                 v["swizzle"])
    ta = tb
    if v["a_rows"]:
        ta = driver.tensormap_2d(driver.DTYPE_FP8, a_ptr, k, v["a_rows"], k, 128, v["a_rows"],
                                 128)
    return tb, ta


class Device:
    """The GPU side the child needs (torch tensors, events, the stream), or its CPU stand-in
    under --fake-driver (host tensors, perf_counter times: the numbers mean nothing)."""

    def __init__(self, fake):
        import torch
        self.torch, self.fake = torch, fake
        self.dev = "cpu" if fake else "cuda"
        if fake:
            self.sms, self.name = 132, "fake driver (no GPU)"
        else:
            props = torch.cuda.get_device_properties(0)
            self.sms, self.name = props.multi_processor_count, props.name
        self.flush_buf = torch.empty(FLUSH_BYTES if not fake else 1 << 20, dtype=torch.uint8,
                                     device=self.dev)

    def stream(self):
        return 0 if self.fake else self.torch.cuda.current_stream().cuda_stream

    def sync(self):
        if not self.fake:
            self.torch.cuda.synchronize()

    def time_ms(self, launch, reps, warmup=2):
        """Median-ready list of per-launch times in ms, L2 flushed before each launch."""
        torch = self.torch
        for _ in range(warmup):
            self.flush_buf.zero_()
            launch()
        if self.fake:
            times = []
            for _ in range(reps):
                self.flush_buf.zero_()
                t0 = time.perf_counter()
                launch()
                times.append((time.perf_counter() - t0) * 1e3)
            return times
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            self.flush_buf.zero_()
            starts[i].record()
            launch()
            ends[i].record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]


class Kernels:
    """The group's cubins loaded (driver.LoadedKernel, max dynamic smem allowed) and a launch
    with a per-launch grid and shared-memory size."""

    def __init__(self, cubin_dir, names):
        from pyfp8gemm.host import driver
        self.driver = driver
        with open(os.path.join(cubin_dir, "manifest.json")) as f:
            self.manifest = json.load(f)
        self.loaded = {}
        for name in names:
            with open(os.path.join(cubin_dir, name + ".cubin"), "rb") as f:
                cubin = f.read()
            self.loaded[name] = driver.LoadedKernel(name, cubin, 0,
                                                    self.manifest[name]["threads"],
                                                    SMEM_LIMIT, 1)
        self.raw = driver.raw_launch_function()
        self._configs = {}

    def launcher(self, name, grid, smem, params, stream):
        """A no-argument function that launches kernel `name` with `params` (a ParamBlock)."""
        driver = self.driver
        kernel = self.loaded[name]
        key = (name, grid, smem, stream)
        if self.raw is not None:
            config = self._configs.get(key)
            if config is None:
                config = self._configs[key] = driver.raw_launch_config(
                    grid, kernel.threads, smem, 1, stream)
            fn, function, address = self.raw, int(kernel.function), params.address

            def launch():
                err = fn(config, function, address, None)
                if err:
                    raise driver.CudaDriverError(driver.error_message(err, "cuLaunchKernelEx",
                                                                      name))
            return launch
        config = kernel._new_config(grid)
        config.sharedMemBytes = smem
        config.hStream = stream

        def launch():
            driver.check(driver.cu.cuLaunchKernelEx(config, kernel.function, params.address, 0),
                         "cuLaunchKernelEx", name)
        return launch


def run_child(args):
    """Measure one group; write its results (a JSON list) after every variant."""
    fake = args.fake_driver
    if fake:
        install_fake_driver()
    import torch
    from pyfp8gemm.host import driver
    dev = Device(fake)
    deadline = args.deadline
    variants = plan(args.quick)[args.child]
    shapes = [s for s in SHAPES if not args.quick or s == ANCHOR]
    ctas = ctas_list(dev.sms)
    if args.quick:
        ctas = sorted({min(78, dev.sms), dev.sms})
    modes = (1, 0)
    results, info = [], dict(device=dev.name, sms=dev.sms, torch=torch.__version__,
                             group=args.child)

    def save():
        with open(args.result, "w") as f:
            json.dump(dict(info=info, results=results), f)

    names = sorted({v["kernel"] for v in variants if v["kernel"]})
    kernels = Kernels(args.cubins, names) if names else None
    stream = dev.stream()
    status = torch.zeros(1, dtype=torch.int32, device=dev.dev)
    times = torch.zeros(2 * dev.sms, dtype=torch.int64, device=dev.dev)
    out = torch.zeros(512 * dev.sms, dtype=torch.int32, device=dev.dev)
    save()
    for n, k in shapes:
        if time.time() > deadline:
            break
        gen = torch.Generator(device=dev.dev).manual_seed(n + k)
        b = torch.randint(0, 256, (n, k), dtype=torch.uint8, device=dev.dev, generator=gen)
        a = torch.randint(0, 256, (A_ROWS, k), dtype=torch.uint8, device=dev.dev, generator=gen)
        b_sum = int(b.view(torch.int32).sum(dtype=torch.int64)) & 0xFFFFFFFF
        nbytes = n * k
        ptr = dict(b=b.data_ptr(), status=status.data_ptr(), times=times.data_ptr(),
                   out=out.data_ptr())
        for v in variants:
            if time.time() > deadline:
                info["stopped"] = "time budget"
                break
            if v["path"] == "roof":
                dst = torch.empty_like(b)
                flat = b.view(torch.int32)
                op = (lambda: dst.copy_(b)) if v["op"] == "copy" else \
                    (lambda: flat.sum(dtype=torch.int64))
                ms = statistics.median(dev.time_ms(op, args.reps))
                results.append(dict(v, n=n, k=k, ctas=None, mode=None, ms=ms,
                                    gbps=nbytes / ms / 1e6, check="-"))
                save()
                del dst
                continue
            reason = invalid_reason(v, n, k)
            if reason:
                results.append(dict(v, n=n, k=k, ctas=None, mode=None, skipped=reason))
                continue
            params_kinds = kernels.manifest[v["kernel"]]["params"]
            maps = tensormaps(v, ptr["b"], a.data_ptr(), n, k) if v["path"] == "tma" else \
                (None, None)
            for mode in modes:
                for grid in ctas:
                    if time.time() > deadline:
                        break
                    rec = dict(v, n=n, k=k, ctas=grid, mode=MODES[mode],
                               smem=launch_smem(v), in_flight=in_flight_bytes(v))
                    if v["path"] != "vector":
                        rec["slot_bytes"] = slot_bytes(v)
                    n_tiles = n // v["block_n"]
                    rec["active_ctas"] = min(grid, n_tiles) if mode == 0 else grid
                    try:
                        block = driver.ParamBlock(tuple(param_values(
                            v, params_kinds, ptr, maps, n, k, mode)))
                        launch = kernels.launcher(v["kernel"], grid, launch_smem(v), block,
                                                  stream)
                        # The validation launch: every wait completed (status), and where the
                        # kernel can tell, the words it read add up to B's (each byte once).
                        summed = v["kernel"] != "probe_cpasync_groups"
                        check_block = driver.ParamBlock(tuple(param_values(
                            v, params_kinds, ptr, maps, n, k, mode, check=1))) \
                            if v["path"] != "vector" else block
                        status.zero_()
                        out.zero_()
                        kernels.launcher(v["kernel"], grid, launch_smem(v), check_block,
                                         stream)()
                        dev.sync()
                        st = int(status.item())
                        check = "ok" if st == 0 else f"TIMEOUT (status {st})"
                        if summed and st == 0 and not fake:
                            got = int(out[:512 * grid].sum(dtype=torch.int64)) & 0xFFFFFFFF
                            check = "ok" if got == b_sum else f"BAD SUM {got:#x} != {b_sum:#x}"
                        rec["check"] = check if summed else check + " (not summed)"
                        if fake:
                            rec["check"] += " (fake driver: nothing ran)"
                        if check == "ok":
                            ms_list = dev.time_ms(launch, args.reps)
                            ms = statistics.median(ms_list)
                            rec.update(ms=ms, gbps=nbytes / ms / 1e6,
                                       ms_min=min(ms_list), ms_max=max(ms_list))
                            t = times[:2 * grid].view(grid, 2).cpu().double()
                            busy = (t[:, 1] - t[:, 0]).clamp(min=0)
                            span = float(t[:, 1].max() - t[:, 0].min())
                            if span > 0:
                                rec["cta_busy_us_max"] = float(busy.max()) / 1e3
                                rec["cta_span_us"] = span / 1e3
                                rec["balance"] = float(busy.mean()) / span
                    except Exception as error:          # noqa: BLE001 (reported, next variant)
                        rec["check"] = f"ERROR {type(error).__name__}: {error}"[:300]
                        results.append(rec)
                        save()
                        text = str(error).lower()
                        if any(s in text for s in ("illegal", "misaligned", "launch fail",
                                                   "launch_fail", "invalid_pc", "program counter",
                                                   "hardware stack", "unspecified")):
                            raise                     # the context is gone: end the child
                        continue
                    results.append(rec)
                    save()
        del b, a
    info["seconds"] = round(time.time() - START, 1)
    save()


def install_fake_driver():
    from host_overhead import build_fake_libcuda
    ctypes.CDLL(build_fake_libcuda(), mode=ctypes.RTLD_GLOBAL)
    from pyfp8gemm.host import driver
    driver._make_primary_context_current = lambda index: None


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def tables(results, sms):
    """Full table: per shape, per variant, TB/s per (mode, CTAs)."""
    lines = []
    ctas = ctas_list(sms)
    for n, k in SHAPES:
        rows = [r for r in results if r.get("n") == n and r.get("k") == k]
        if not rows:
            continue
        lines.append(f"\nB {n} x {k} ({n * k / 1e6:.1f} MB), TB/s of B read once; "
                     f"columns: schedule@CTAs")
        head = "  ".join(f"{m}@{c}" for m in ("bal", "tiles") for c in ctas)
        lines.append(f"{'variant':40s} {'inflt':>6s}  {head}")
        seen = []
        for r in rows:
            if r["label"] not in seen:
                seen.append(r["label"])
        for label in seen:
            mine = [r for r in rows if r["label"] == label]
            if mine[0]["path"] == "roof":
                r = mine[0]
                extra = f" (read+write {2 * r['gbps'] / 1e3:.2f})" if r.get("op") == "copy" \
                    else ""
                lines.append(f"{label:40s} {'':>6s}  {r['gbps'] / 1e3:.2f}{extra}")
                continue
            if mine[0].get("skipped"):
                lines.append(f"{label:40s} skipped: {mine[0]['skipped']}")
                continue
            cells = []
            for m in ("bal", "tiles"):
                for c in ctas:
                    r = next((x for x in mine if x["mode"] == m and x["ctas"] == c), None)
                    width = len(f"{m}@{c}")
                    if r is None:
                        cell = "-"
                    elif "gbps" in r:
                        cell = f"{r['gbps'] / 1e3:.2f}"
                    else:
                        cell = "ERR" if r.get("check", "").startswith("ERROR") else "FAIL"
                    cells.append(cell.rjust(width))
            infl = mine[0].get("in_flight", 0)
            lines.append(f"{label:40s} {infl // KB:5d}K  " + "  ".join(cells))
    return lines


def summary(results):
    """Best GB/s per load path and shape (balanced and tiles schedules), and the roofs."""
    lines = ["\nSUMMARY: best TB/s per load path (variant, schedule@CTAs)"]
    for n, k in SHAPES:
        rows = [r for r in results if r.get("n") == n and r.get("k") == k and "gbps" in r]
        if not rows:
            continue
        roof = {r["op"]: r["gbps"] for r in rows if r["path"] == "roof"}
        lines.append(f"B {n}x{k}: torch copy_ {roof.get('copy', 0) / 1e3:.2f} "
                     f"(x2 traffic {2 * roof.get('copy', 0) / 1e3:.2f}), torch sum "
                     f"{roof.get('sum', 0) / 1e3:.2f}")
        for path in ("tma", "cpasync", "vector"):
            for mode in ("bal", "tiles"):
                mine = [r for r in rows if r["path"] == path and r["mode"] == mode]
                if mine:
                    best = max(mine, key=lambda r: r["gbps"])
                    lines.append(f"  {path:8s} {mode:5s} {best['gbps'] / 1e3:.2f}  "
                                 f"{best['label']} @{best['ctas']}")
        gemm = [r for r in rows if r["label"] == "tma 64x128B s13 +A64 (GEMM ring)"
                and r["mode"] == "tiles"]
        for r in gemm:
            lines.append(f"  GEMM ring (tiles @{r['ctas']}): {r['gbps'] / 1e3:.2f}")
    bad = [r for r in results if r.get("check") is not None and
           not r["check"].startswith(("ok", "-"))]
    if bad:
        lines.append(f"FAILED checks: {len(bad)}, e.g. " + "; ".join(
            f"{r['label']} {r['n']}x{r['k']} {r['mode']}@{r['ctas']}: {r['check']}"
            for r in bad[:4]))
    return lines


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------

def dry_run(groups, manifest, sms=132):
    """Everything short of the GPU: parameter lists against the compiled signatures (with
    placeholder tensor maps and pointers), launch sizes, the number of runs and their order."""
    from pyfp8gemm.host import driver
    fake_maps = (driver.cu.CUtensorMap(), driver.cu.CUtensorMap())
    ptr = dict(b=1 << 40, status=2 << 40, times=3 << 40, out=4 << 40)
    runs = 0
    print(f"\nplan ({sms} SMs assumed; CTAs {ctas_list(sms)}; schedules bal, tiles):")
    for g, variants in groups.items():
        print(f"[{g}]")
        for v in variants:
            if v["path"] == "roof":
                print(f"  {v['label']}")
                runs += len(SHAPES)
                continue
            cells = []
            for n, k in SHAPES:
                reason = invalid_reason(v, n, k)
                if reason:
                    cells.append(f"{n}x{k}: skip ({reason})")
                    continue
                for mode in MODES:
                    block = driver.ParamBlock(tuple(param_values(
                        v, manifest[v["kernel"]]["params"], ptr, fake_maps, n, k, mode)))
                    assert block.address
                runs += 2 * len(ctas_list(sms))
            print(f"  {v['label']:40s} {v['kernel']:28s} smem {launch_smem(v) // KB:3d}K "
                  f"in flight {in_flight_bytes(v) // KB:4d}K" +
                  ("  " + "; ".join(cells) if cells else ""))
    print(f"\n{runs} timed runs; at ~3-5 ms each (flush + launch, reps 15) plus ~5 s per "
          f"child process start: ~{runs * 0.004 + 5 * len(groups):.0f} s of GPU-side time")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="compile, check parameters, print the plan; no GPU")
    parser.add_argument("--fake-driver", action="store_true",
                        help="run the host path against a do-nothing libcuda (no GPU)")
    parser.add_argument("--quick", action="store_true", help="anchor shape, a few variants")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--budget-s", type=float, default=200,
                        help="wall-clock budget for everything, compile included")
    parser.add_argument("--only", nargs="*", choices=GROUPS, default=None)
    parser.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--child", choices=GROUPS, help=argparse.SUPPRESS)
    parser.add_argument("--cubins", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return

    groups = plan(args.quick)
    if args.only:
        groups = {g: groups[g] for g in GROUPS if g in args.only}
    names = sorted({v["kernel"] for vs in groups.values() for v in vs if v["kernel"]})
    work = tempfile.mkdtemp(prefix="probe_small_m_")
    manifest = compile_all(names, work, args.jobs) if names else {}
    if args.dry_run:
        dry_run(groups, manifest)
        return

    out_dir = os.environ.get("OUT")
    results, info = [], {}
    group_list = list(groups)
    for i, g in enumerate(group_list):
        remaining = args.budget_s - (time.time() - START)
        if remaining < 10:
            print(f"[{g}] not run: time budget spent")
            info.setdefault("not_run", []).append(g)
            continue
        share = remaining / (len(group_list) - i)
        deadline = time.time() + share - 6          # leave the child time to write and exit
        result_file = os.path.join(work, f"{g}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", g, "--cubins", work,
               "--result", result_file, "--deadline", str(deadline), "--reps", str(args.reps)]
        if args.quick:
            cmd.append("--quick")
        if args.fake_driver:
            cmd.append("--fake-driver")
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=share + 20)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = "timeout", (e.stderr or b"").decode(errors="replace") \
                if isinstance(e.stderr, bytes) else (e.stderr or "")
        part = {}
        if os.path.exists(result_file):
            with open(result_file) as f:
                part = json.load(f)
        results += part.get("results", [])
        info.update({k: v for k, v in part.get("info", {}).items() if k != "group"})
        info.setdefault("groups", {})[g] = dict(rc=rc, seconds=round(time.time() - t0, 1),
                                                runs=len(part.get("results", [])),
                                                stopped=part.get("info", {}).get("stopped"))
        tail = "\n".join(line for line in (err or "").splitlines()
                         if "Warn" not in line)[-1500:]
        print(f"[{g}] rc {rc}, {len(part.get('results', []))} results, "
              f"{time.time() - t0:.1f} s" + (f"\n{tail}" if rc not in (0,) and tail else ""))

    sms = info.get("sms", 132)
    head = [f"device: {info.get('device', '?')}, {sms} SMs, reps {args.reps}, "
            f"total {time.time() - START:.0f} s"]
    full = tables(results, sms)
    text = "\n".join(head + full + summary(results))
    # stdout: the anchor shape's table and the summary (the other shapes: the .txt / .json)
    anchor = [r for r in results if (r.get("n"), r.get("k")) == ANCHOR]
    print("\n".join(head + tables(anchor, sms) + summary(results)))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "probe_small_m.json"), "w") as f:
            json.dump(dict(info=info, kernels=manifest, results=results), f, indent=1)
        with open(os.path.join(out_dir, "probe_small_m.txt"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
