"""CPU tests of the benchmark CLI (bench/): everything but the GPU timing itself.

Shape parsing and named sets, the FLOP/byte arithmetic, ratios and geometric means, the tables,
the JSON round trip, the plot (when matplotlib is installed), the quantized inputs' layouts, and
the measuring loop driven by CPU providers and a fake timer. No test here touches a GPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:  # `bench` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPOSITORY_ROOT))

from bench import cli  # noqa: E402
from bench.inputs import (  # noqa: E402
    FP8_DTYPE,
    make_gemm_inputs,
    quantize_1x128,
    quantize_128x128,
    quantize_per_tensor,
)
from bench.metrics import (  # noqa: E402
    BF16,
    FP8_BLOCKWISE,
    FP8_TENSORWISE,
    calc_diff,
    gb_per_s,
    gemm_bytes,
    gemm_flops,
    geomean,
    speed_ratio,
    tflops,
)
from bench.providers import (  # noqa: E402
    PROVIDER_NAMES,
    PreparedGemm,
    Provider,
    ShapeNotSupported,
    TorchBf16Provider,
    select_providers,
)
from bench.report import format_report, markdown_table, notes, speed_table  # noqa: E402
from bench.results import (  # noqa: E402
    ERROR,
    OK,
    SKIPPED,
    UNAVAILABLE,
    Measurement,
    geomean_ratios,
    load_json,
    min_ratios,
    results_to_json,
    write_json,
)
from bench.runner import run_benchmark  # noqa: E402
from bench.shapes import ANCHOR_SHAPES, SHAPE_SETS, SMALL_SHAPES, Shape, parse_shape, select_shapes  # noqa: E402
from bench.timing import resolve_timing_method, triton_is_available  # noqa: E402

# ../shared/ANCHORS.md, first table: M, N, K, then TFLOPS of bf16, fp8 per-tensor,
# fp8 block-wise (cuBLAS) and DeepGEMM, measured side by side on one H200.
ANCHORS_TABLE = """
64 2112 7168 102 153 77 143
64 24576 1536 156 246 232 247
64 32768 512 123 167 157 173
64 7168 16384 208 350 278 351
64 4096 7168 149 233 148 222
64 7168 2048 116 159 141 176
128 2112 7168 198 298 154 280
128 24576 1536 306 492 462 486
128 32768 512 228 312 314 323
128 7168 16384 389 688 554 645
128 4096 7168 278 440 284 453
128 7168 2048 242 331 277 316
4096 2112 7168 718 1191 1045 1161
4096 24576 1536 682 1130 1003 1100
4096 32768 512 574 821 764 962
4096 7168 16384 702 1205 1086 1215
4096 4096 7168 708 1201 1149 1284
4096 7168 2048 705 1132 1071 1179
8192 8192 8192 658 1226 1115 1244
"""

RUN_INFO = {
    "date": "2026-11-28T12:00:00+00:00",
    "device": {"name": "NVIDIA H200", "capability": "9.0", "sm_count": 132},
    "versions": {"torch": "2.11.0+cu130", "triton": "3.6.0"},
    "timing": "do_bench",
    "timing_description": "triton do_bench median",
}


def time_for(shape: Shape, tflops_value: float) -> float:
    """The milliseconds that give `tflops_value` on `shape`."""
    return gemm_flops(shape) / (tflops_value * 1e12) * 1e3


def anchors_results() -> list[Measurement]:
    """ANCHORS.md's table as benchmark results (the DeepGEMM column doubles as a fake pyfp8gemm)."""
    results = []
    for line in ANCHORS_TABLE.split("\n"):
        if not line.strip():
            continue
        m, n, k, bf16, per_tensor, blockwise, deepgemm = map(int, line.split())
        shape = Shape(m, n, k)
        for provider, operand_format, value in (
            ("deepgemm", FP8_BLOCKWISE, deepgemm),
            ("cublas-blockwise", FP8_BLOCKWISE, blockwise),
            ("cublas-tensorwise", FP8_TENSORWISE, per_tensor),
            ("torch-bf16", BF16, bf16),
        ):
            results.append(Measurement.measured(shape, provider, operand_format, time_for(shape, value), 6.9e-4))
    return results


def mixed_results() -> list[Measurement]:
    """Two shapes with every kind of cell: measured, skipped, failed, provider not installed."""
    a, b = Shape(128, 7168, 2048), Shape(64, 2112, 7000)
    return [
        Measurement.measured(a, "pyfp8gemm", FP8_BLOCKWISE, time_for(a, 400.0), 6.9e-4),
        Measurement.not_measured(a, "deepgemm", UNAVAILABLE, "import deep_gemm failed"),
        Measurement.measured(a, "cublas-blockwise", FP8_BLOCKWISE, time_for(a, 200.0), 6.8e-4),
        Measurement.measured(b, "pyfp8gemm", FP8_BLOCKWISE, time_for(b, 50.0), float("nan")),
        Measurement.not_measured(b, "deepgemm", UNAVAILABLE, "import deep_gemm failed"),
        Measurement.not_measured(b, "cublas-blockwise", SKIPPED, "needs K % 128 == 0"),
    ]


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4096x4096x7168", Shape(4096, 4096, 7168)),
        ("64X2112X7168", Shape(64, 2112, 7168)),
        (" 1,2,3 ", Shape(1, 2, 3)),
        ("8*16*32", Shape(8, 16, 32)),
    ],
)
def test_parse_shape_accepts_mxnxk(text, expected):
    assert parse_shape(text) == expected
    assert expected.label == f"{expected.m}x{expected.n}x{expected.k}"


@pytest.mark.parametrize("text", ["4096x4096", "axbxc", "1x2x3x4", "0x128x128", "", "-1x2x3"])
def test_parse_shape_rejects_malformed_text(text):
    with pytest.raises(ValueError):
        parse_shape(text)


def test_anchor_set_is_the_19_shapes_of_anchors_md_in_order():
    expected = [Shape(*map(int, line.split()[:3])) for line in ANCHORS_TABLE.split("\n") if line.strip()]
    assert list(ANCHOR_SHAPES) == expected
    assert len(SHAPE_SETS["anchors"]) == 19


def test_named_sets_are_subsets_or_quick():
    assert set(SHAPE_SETS["small-m"]) | set(SHAPE_SETS["large-m"]) == set(ANCHOR_SHAPES)
    assert all(shape.m <= 128 for shape in SHAPE_SETS["small-m"])
    assert 1 <= len(SMALL_SHAPES) <= 5


def test_select_shapes_defaults_to_anchors_and_keeps_order_without_duplicates():
    assert select_shapes(None, None) == list(ANCHOR_SHAPES)
    only = [Shape(1, 2, 3), Shape(4, 5, 6)]
    assert select_shapes(None, only) == only
    combined = select_shapes(["small"], [SMALL_SHAPES[0], Shape(1, 2, 3)])
    assert combined == [*SMALL_SHAPES, Shape(1, 2, 3)]
    with pytest.raises(ValueError, match="unknown shape set"):
        select_shapes(["nope"], None)


# ---------------------------------------------------------------- arithmetic


def test_flops_and_tflops():
    shape = Shape(4096, 4096, 7168)
    assert gemm_flops(shape) == 2 * 4096 * 4096 * 7168
    # 240.5 GFLOP in 0.2 ms is 1202.6 TFLOPS
    assert tflops(shape, 0.2) == pytest.approx(2 * 4096 * 4096 * 7168 / 0.2e-3 / 1e12)
    assert tflops(shape, 0.2) == pytest.approx(1202.59, rel=1e-5)


def test_bytes_per_operand_format():
    shape = Shape(64, 2112, 7168)  # K / 128 = 56 scale blocks, N / 128 = 16.5 -> 17
    a, b, d = 64 * 7168, 2112 * 7168, 2 * 64 * 2112
    assert gemm_bytes(shape, FP8_BLOCKWISE) == a + b + 4 * 64 * 56 + 4 * 17 * 56 + d
    assert gemm_bytes(shape, FP8_TENSORWISE) == a + b + 8 + d
    assert gemm_bytes(shape, BF16) == 2 * a + 2 * b + d
    with pytest.raises(ValueError):
        gemm_bytes(shape, "fp4")


def test_bandwidth_and_ratio():
    assert gb_per_s(4_300_000_000, 1.0) == pytest.approx(4300.0)
    assert speed_ratio(1.0, 2.0) == pytest.approx(2.0)  # half the baseline's time: twice as fast
    assert speed_ratio(None, 2.0) is None
    assert speed_ratio(1.0, None) is None


def test_geomean():
    assert geomean([2.0, 0.5]) == pytest.approx(1.0)
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert geomean([3.0, None]) == pytest.approx(3.0)
    assert geomean([]) is None
    assert geomean([None, float("nan")]) is None


def test_calc_diff_is_deepgemms_formula():
    x = torch.randn(32, 48)
    assert calc_diff(x, x) == pytest.approx(0.0, abs=1e-12)
    assert calc_diff(x, -x) == pytest.approx(2.0)
    y = x + 0.01 * torch.randn(32, 48)
    expected = 1 - 2 * (x.double() * y.double()).sum() / (x.double() ** 2 + y.double() ** 2).sum()
    assert calc_diff(x, y) == pytest.approx(float(expected))
    assert math.isnan(calc_diff(torch.full((2, 2), float("nan")), x[:2, :2]))


def test_geomean_of_anchors_md_matches_its_summary():
    """ANCHORS.md: DeepGEMM / cuBLAS block-wise geomean 1.23, DeepGEMM / per-tensor 1.01."""
    results = anchors_results()
    assert geomean_ratios(results, "cublas-blockwise")["deepgemm"] == pytest.approx(1.23, abs=0.005)
    assert geomean_ratios(results, "cublas-tensorwise")["deepgemm"] == pytest.approx(1.01, abs=0.005)
    assert geomean_ratios(results, "cublas-blockwise")["cublas-blockwise"] == pytest.approx(1.0)
    assert min_ratios(results, "cublas-blockwise")["deepgemm"] == pytest.approx(323 / 314, abs=0.005)


# ---------------------------------------------------------------- tables


def test_markdown_table_lines_up():
    table = markdown_table(["name", "x"], [["a", "1"], ["bbb", "100"]], left_columns=1)
    lines = table.split("\n")
    assert len({len(line) for line in lines}) == 1
    assert lines[1].startswith("|---") and lines[1].endswith(":|")


def test_speed_table_has_a_row_per_shape_ratios_and_geomean():
    table = speed_table(anchors_results(), "cublas-blockwise", PROVIDER_NAMES)
    lines = table.split("\n")
    assert lines[0].split("|")[4].strip() == "DeepGEMM"
    assert len(lines) == 2 + 19 + 2  # header, rule, shapes, geomean, min
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert len({line.count("|") for line in lines}) == 1
    first_row = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert first_row[:3] == ["64", "2112", "7168"]
    assert first_row[3] == "143 (1.86x)"  # DeepGEMM at 64x2112x7168
    assert first_row[4] == "77.0"  # the baseline shows no ratio
    geomean_row = [cell.strip() for cell in lines[-2].strip("|").split("|")]
    assert geomean_row[0] == "geomean" and geomean_row[3] == "1.23x"


def test_tables_mark_skipped_failed_and_absent_cells():
    results = mixed_results()
    table = speed_table(results, "cublas-blockwise", PROVIDER_NAMES)
    assert "DeepGEMM" not in table  # not installed anywhere: no column, a note instead
    assert "400 (2.00x)" in table
    assert "skip" in table
    lines = notes(results, PROVIDER_NAMES)
    assert any("DeepGEMM: n/a on all shapes: import deep_gemm failed" in line for line in lines)
    assert any("cuBLAS block-wise: skip on 64x2112x7000" in line for line in lines)
    report = format_report(RUN_INFO, results, "cublas-blockwise", PROVIDER_NAMES)
    assert "NVIDIA H200" in report and "calc_diff" in report and "nan" in report
    error = [Measurement.not_measured(Shape(1, 16, 16), "pyfp8gemm", ERROR, "RuntimeError: boom")]
    assert "error" in speed_table(error, "cublas-blockwise", PROVIDER_NAMES)


# ---------------------------------------------------------------- JSON


def test_json_round_trip(tmp_path):
    results = mixed_results()
    path = tmp_path / "out" / "run.json"
    write_json(path, RUN_INFO, results, "cublas-blockwise", PROVIDER_NAMES)
    document = json.loads(path.read_text())  # strict JSON: NaN must have become null
    assert document["schema"] == "pyfp8gemm-bench/1"
    assert document["run"]["device"]["name"] == "NVIDIA H200"
    assert document["baseline"] == "cublas-blockwise"
    assert document["provider_names"]["pyfp8gemm"] == "pyfp8gemm"
    row = document["results"][0]
    assert set(row) >= {
        "m", "n", "k", "shape", "provider", "status", "time_ms", "tflops", "gb_per_s",
        "calc_diff", "ratio_to_baseline", "note",
    }
    assert row["shape"] == "128x7168x2048" and row["ratio_to_baseline"] == pytest.approx(2.0)
    nan_row = document["results"][3]
    assert nan_row["calc_diff"] is None and "nan" in nan_row["note"]
    assert document["geomean_ratio_to_baseline"]["pyfp8gemm"] == pytest.approx(2.0)

    run_info, loaded, baseline, names = load_json(path)
    assert baseline == "cublas-blockwise" and run_info["timing"] == "do_bench"
    assert [(r.shape, r.provider, r.status) for r in loaded] == [(r.shape, r.provider, r.status) for r in results]
    assert loaded[0].tflops == pytest.approx(400.0)


def test_load_json_rejects_other_schemas(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"schema": "something-else", "results": []}))
    with pytest.raises(ValueError, match="schema"):
        load_json(path)


def test_results_to_json_can_change_baseline():
    document = results_to_json(RUN_INFO, anchors_results(), "deepgemm", PROVIDER_NAMES)
    assert document["geomean_ratio_to_baseline"]["deepgemm"] == pytest.approx(1.0)
    assert document["geomean_ratio_to_baseline"]["cublas-blockwise"] == pytest.approx(1 / 1.23, abs=0.005)


# ---------------------------------------------------------------- plot


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.plot import plot_results

    path = plot_results(
        tmp_path / "plot.png", anchors_results() + mixed_results(), "cublas-blockwise", PROVIDER_NAMES, title="test"
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


# ---------------------------------------------------------------- CLI


def test_help_works_without_a_gpu():
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "--shape" in completed.stdout and "cublas-blockwise" in completed.stdout


def test_measuring_without_a_gpu_exits_2_with_a_message(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["--set", "small"]) == cli.EXIT_NEEDS_GPU
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bad_arguments_exit_2():
    for argv in (["--shape", "12x34"], ["--set", "nope"], ["--providers", "nope"], ["--baseline", "nope"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2


def test_list_and_provider_selection(capsys):
    assert cli.main(["--list"]) == 0
    output = capsys.readouterr().out
    assert "anchors (19)" in output and "cublas-tensorwise" in output
    assert cli.provider_keys(["pyfp8gemm, torch-bf16", "deepgemm"]) == ["pyfp8gemm", "torch-bf16", "deepgemm"]
    assert cli.provider_keys(None) is None
    # table order, whatever order they were asked in
    assert [p.key for p in select_providers(["torch-bf16", "pyfp8gemm"])] == ["pyfp8gemm", "torch-bf16"]


def test_load_prints_and_plots_a_saved_run(tmp_path, capsys):
    saved = tmp_path / "run.json"
    write_json(saved, RUN_INFO, anchors_results(), "cublas-blockwise", PROVIDER_NAMES)
    argv = ["--load", str(saved), "--baseline", "cublas-tensorwise"]
    plot_path = tmp_path / "again.png"
    try:
        import matplotlib  # noqa: F401

        argv += ["--plot", str(plot_path)]
    except ImportError:
        plot_path = None
    assert cli.main(argv) == 0
    output = capsys.readouterr().out
    assert "relative to cuBLAS per-tensor" in output and "| geomean |" in output
    if plot_path is not None:
        assert plot_path.stat().st_size > 10_000


def test_timing_method_resolution():
    assert resolve_timing_method("auto") == ("do_bench" if triton_is_available() else "events")
    assert resolve_timing_method("events") == "events"
    assert resolve_timing_method("profiler") == "profiler"
    with pytest.raises(ValueError):
        resolve_timing_method("stopwatch")


def test_regression_suite_is_not_collected_by_default():
    """bench/test_regression.py runs only when named: pytest's testpaths must stay ["tests"]."""
    tomllib = pytest.importorskip("tomllib")
    settings = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())
    assert settings["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert (REPOSITORY_ROOT / "bench" / "test_regression.py").exists()


# ---------------------------------------------------------------- inputs (on the CPU)


def test_1x128_scales_are_mn_major_and_tma_aligned():
    x = torch.randn(6, 300)  # 6 rows -> column stride 8; 300 columns -> 3 scale blocks (last partial)
    data, scale = quantize_1x128(x)
    assert data.dtype == FP8_DTYPE and data.shape == (6, 300) and data.is_contiguous()
    assert scale.shape == (6, 3) and scale.stride() == (1, 8) and scale.dtype == torch.float32
    expanded = scale.repeat_interleave(128, dim=1)[:, :300]
    dequantized = data.float() * expanded
    assert calc_diff(dequantized, x) < 1e-3
    assert scale[0, 0] == pytest.approx(float(x[0, :128].abs().max()) / 448.0)


def test_128x128_scales_are_row_major_per_block():
    w = torch.randn(200, 300)
    data, scale = quantize_128x128(w)
    assert data.shape == (200, 300) and data.is_contiguous()
    assert scale.shape == (2, 3) and scale.is_contiguous()
    assert scale[1, 2] == pytest.approx(float(w[128:, 256:].abs().max()) / 448.0)
    expanded = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:200, :300]
    assert calc_diff(data.float() * expanded, w) < 1e-3


def test_per_tensor_quantization_and_fresh_inputs():
    x = torch.randn(16, 32)
    data, scale = quantize_per_tensor(x)
    assert scale.numel() == 1 and calc_diff(data.float() * scale, x) < 1e-3
    inputs = make_gemm_inputs(Shape(5, 24, 256), seed=3, device="cpu")
    assert inputs.a_bf16.abs().sum() > 0 and inputs.b_bf16.abs().sum() > 0  # never zeros
    assert inputs.reference.shape == (5, 24) and inputs.reference.dtype == torch.float32
    assert inputs.a_scale.stride() == (1, 8)
    again = make_gemm_inputs(Shape(5, 24, 256), seed=3, device="cpu")
    assert torch.equal(inputs.a_bf16, again.a_bf16)  # same seed, same numbers


# ---------------------------------------------------------------- the measuring loop (on the CPU)


class SkippingProvider(Provider):
    key, name = "skipper", "Skipper"

    def prepare(self, inputs):
        raise ShapeNotSupported("never runs")


class FailingProvider(Provider):
    key, name = "failer", "Failer"

    def prepare(self, inputs):
        raise RuntimeError("kernel exploded\nsecond line")


class LazyProvider(Provider):
    """Returns without writing its output: the NaN poison must show in calc_diff."""

    key, name = "lazy", "Lazy"

    def prepare(self, inputs):
        out = torch.empty(inputs.shape.m, inputs.shape.n, dtype=torch.bfloat16)
        return PreparedGemm(lambda: out, out)


class AbsentProvider(Provider):
    key, name = "absent", "Absent"

    def unavailable_reason(self):
        return "not installed"


def test_runner_records_every_kind_of_cell():
    providers = [TorchBf16Provider(), SkippingProvider(), FailingProvider(), LazyProvider(), AbsentProvider()]
    results = run_benchmark(
        [Shape(32, 64, 256)], providers, timer=lambda fn: 0.5, show_progress=False, device="cpu"
    )
    by_provider = {result.provider: result for result in results}
    bf16 = by_provider["torch-bf16"]
    assert bf16.status == OK and bf16.time_ms == 0.5 and bf16.calc_diff < 1e-4
    assert bf16.tflops == pytest.approx(tflops(Shape(32, 64, 256), 0.5))
    assert by_provider["skipper"].status == SKIPPED and by_provider["skipper"].note == "never runs"
    assert by_provider["failer"].status == ERROR and by_provider["failer"].note == "RuntimeError: kernel exploded"
    assert math.isnan(by_provider["lazy"].calc_diff)
    assert by_provider["absent"].status == UNAVAILABLE and by_provider["absent"].note == "not installed"


class NamedBf16Provider(TorchBf16Provider):
    """torch-bf16 under another key, to have several measurable providers on the CPU."""

    def __init__(self, key):
        self.key = self.name = key


def test_rounds_interleave_providers_and_take_the_median():
    providers = [NamedBf16Provider("p0"), NamedBf16Provider("p1"), NamedBf16Provider("p2"),
                 SkippingProvider()]
    timed = []
    fake_times = iter([5.0, 1.0, 9.0, 3.0, 2.0, 7.0, 4.0, 6.0, 8.0])

    def timer(fn):
        timed.append(fn)
        return next(fake_times)

    results = run_benchmark([Shape(32, 64, 256)], providers, timer=timer, show_progress=False,
                            device="cpu", rounds=3)
    by_provider = {result.provider: result for result in results}
    # Round r starts at provider r (the skipped one is never timed): p0 p1 p2 | p1 p2 p0 | p2 p0 p1
    # p0 got 5, 7, 6 -> 6; p1 got 1, 3, 8 -> 3; p2 got 9, 2, 4 -> 4.
    assert (by_provider["p0"].time_ms, by_provider["p1"].time_ms, by_provider["p2"].time_ms) == (6.0, 3.0, 4.0)
    assert by_provider["skipper"].status == SKIPPED
    assert len(timed) == 9
    assert [result.provider for result in results] == ["p0", "p1", "p2", "skipper"]


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="rounds"):
        run_benchmark([Shape(32, 64, 256)], [TorchBf16Provider()], timer=lambda fn: 1.0,
                      show_progress=False, device="cpu", rounds=0)


# ---------------------------------------------------------------- how cuBLAS is called (on the CPU)


def test_cublas_blockwise_gets_the_scale_layouts_torch_recognises(monkeypatch):
    """ScaledBlas.cpp: scale_a (M, K/128) strides (1, M); scale_b = w_scale.t(), i.e. scale_b.t()
    is (N/128, K/128) row-major; b = weights.t() (K, N) column-major; bf16 out."""
    from bench.providers import CublasBlockwiseProvider

    calls = []

    def fake_scaled_mm(a, b, scale_a, scale_b, out_dtype=None, out=None):
        calls.append((a, b, scale_a, scale_b, out_dtype, out))
        return out

    monkeypatch.setattr(torch, "_scaled_mm", fake_scaled_mm)
    inputs = make_gemm_inputs(Shape(6, 256, 512), seed=0, device="cpu")  # M = 6: our scales pad to 8
    prepared = CublasBlockwiseProvider().prepare(inputs)
    assert prepared.run() is prepared.output
    a, b, scale_a, scale_b, out_dtype, out = calls[-1]
    assert a.shape == (6, 512) and a.is_contiguous()
    assert b.shape == (512, 256) and b.stride() == (1, 512)
    assert scale_a.shape == (6, 4) and scale_a.stride() == (1, 6)
    assert torch.equal(scale_a, inputs.a_scale)
    assert scale_b.shape == (4, 2) and scale_b.t().is_contiguous()
    assert torch.equal(scale_b.t(), inputs.b_scale)
    assert out_dtype == torch.bfloat16 and out.shape == (6, 256)


def test_cublas_blockwise_skips_what_it_cannot_run(monkeypatch):
    from bench.providers import CublasBlockwiseProvider

    def not_supported(*args, **kwargs):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmulAlgoGetHeuristic")

    monkeypatch.setattr(torch, "_scaled_mm", not_supported)
    with pytest.raises(ShapeNotSupported, match="M % 4"):
        CublasBlockwiseProvider().prepare(make_gemm_inputs(Shape(3, 128, 256), seed=0, device="cpu"))
    with pytest.raises(ShapeNotSupported, match="K to be a multiple of 128"):
        CublasBlockwiseProvider().prepare(make_gemm_inputs(Shape(4, 128, 144), seed=0, device="cpu"))


@pytest.mark.parametrize("content", [None, "not json", '{"schema": "other"}'])
def test_load_of_a_missing_or_foreign_file_is_a_clear_error(tmp_path, capsys, content):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    assert cli.main(["--load", str(path)]) == cli.EXIT_FAILURE
    captured = capsys.readouterr()
    assert str(path) in captured.err and "Traceback" not in captured.err
    assert ("no such file" in captured.err) == (content is None)


def test_decode_set_covers_m_1_to_32_on_deepseek_v3_shapes():
    from bench.shapes import DEEPSEEK_V3_NK, SHAPE_SETS

    shapes = SHAPE_SETS["decode"]
    assert {s.m for s in shapes} == {1, 2, 4, 8, 16, 32}
    assert {(s.n, s.k) for s in shapes} == set(DEEPSEEK_V3_NK)
    assert len(shapes) == 36
