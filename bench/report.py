"""Plain-text (markdown) tables of a benchmark run.

The main table has one row per shape and one column per provider; each cell is TFLOPS and, in
parentheses, the speed relative to the baseline (cuBLAS block-wise unless --baseline says
otherwise). Under it, two rows: the geometric mean and the minimum of those ratios. Smaller tables
with GB/s and calc_diff follow, then notes on the cells that were skipped or failed.
Every table is valid GitHub markdown and lines up in a terminal.
"""

from __future__ import annotations

import math
from typing import Callable

from bench.results import (
    ERROR,
    OK,
    SKIPPED,
    UNAVAILABLE,
    Measurement,
    geomean_ratios,
    min_ratios,
    providers_with_data,
    ratios_to_baseline,
    result_lookup,
    shapes_in_order,
)

NOT_MEASURED_CELL = {SKIPPED: "skip", ERROR: "error", UNAVAILABLE: "n/a"}


def format_tflops(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_calc_diff(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:.1e}"


def markdown_table(header: list[str], rows: list[list[str]], left_columns: int = 0) -> str:
    """A markdown table padded to line up in a terminal; columns after `left_columns` right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if index < left_columns else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (width + 2)) if index < left_columns else ("-" * (width + 1) + ":")
        for index, width in enumerate(widths)
    ) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _cell(result: Measurement | None, measured: Callable[[Measurement], str]) -> str:
    if result is None:
        return "-"
    if result.status != OK:
        return NOT_MEASURED_CELL.get(result.status, result.status)
    return measured(result)


def speed_table(results: list[Measurement], baseline: str, provider_names: dict[str, str]) -> str:
    providers = providers_with_data(results)
    cells = result_lookup(results)
    ratios = ratios_to_baseline(results, baseline)
    header = ["M", "N", "K", *(provider_names.get(p, p) for p in providers)]
    rows = []
    for shape in shapes_in_order(results):
        row = [str(shape.m), str(shape.n), str(shape.k)]
        for provider in providers:
            ratio = ratios.get((shape, provider))

            def tflops_and_ratio(result: Measurement, provider=provider, ratio=ratio) -> str:
                text = format_tflops(result.tflops)
                if provider != baseline and ratio is not None:
                    text += f" ({format_ratio(ratio)})"
                return text

            row.append(_cell(cells.get((shape, provider)), tflops_and_ratio))
        rows.append(row)
    geomeans = geomean_ratios(results, baseline)
    minimums = min_ratios(results, baseline)
    rows.append(["geomean", "", "", *(format_ratio(geomeans.get(p)) for p in providers)])
    rows.append(["min", "", "", *(format_ratio(minimums.get(p)) for p in providers)])
    return markdown_table(header, rows)


def metric_table(
    results: list[Measurement], provider_names: dict[str, str], measured: Callable[[Measurement], str]
) -> str:
    providers = providers_with_data(results)
    cells = result_lookup(results)
    header = ["M", "N", "K", *(provider_names.get(p, p) for p in providers)]
    rows = [
        [str(shape.m), str(shape.n), str(shape.k), *(_cell(cells.get((shape, p)), measured) for p in providers)]
        for shape in shapes_in_order(results)
    ]
    return markdown_table(header, rows)


def notes(results: list[Measurement], provider_names: dict[str, str]) -> list[str]:
    """One line per (provider, status, reason), naming the shapes it hit ('all shapes' if every one)."""
    all_shapes = shapes_in_order(results)
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for result in results:
        if result.status == OK:
            continue
        grouped.setdefault((result.provider, result.status, result.note), []).append(result.shape.label)
    lines = []
    for (provider, status, note), labels in grouped.items():
        where = "all shapes" if len(labels) == len(all_shapes) else ", ".join(labels)
        cell = NOT_MEASURED_CELL.get(status, status)
        lines.append(f"- {provider_names.get(provider, provider)}: {cell} on {where}: {note}")
    return lines


def run_header(run_info: dict) -> str:
    device = run_info.get("device", {})
    versions = run_info.get("versions", {})
    parts = [device.get("name", "unknown device")]
    if device.get("capability"):
        parts.append(f"sm_{device['capability'].replace('.', '')}")
    if device.get("sm_count"):
        parts.append(f"{device['sm_count']} SMs")
    timing = run_info.get("timing_description", run_info.get("timing", "?"))
    software = ", ".join(f"{name} {version}" for name, version in versions.items() if version and name != "python")
    return f"{' / '.join(parts)}, {run_info.get('date', '?')}; timing: {timing}\n{software}"


def format_report(
    run_info: dict, results: list[Measurement], baseline: str, provider_names: dict[str, str]
) -> str:
    baseline_name = provider_names.get(baseline, baseline)
    sections = [
        run_header(run_info),
        "",
        f"TFLOPS (in parentheses: speed relative to {baseline_name}, > 1 is faster)",
        speed_table(results, baseline, provider_names),
        "",
        "GB/s (bytes of A, B and their scales read once, D written once)",
        metric_table(results, provider_names, lambda r: f"{r.gb_per_s:.0f}"),
        "",
        "calc_diff against the fp32 product of the unquantized inputs (FP8: ~7e-4 expected, < 1e-3 required)",
        metric_table(results, provider_names, lambda r: format_calc_diff(r.calc_diff)),
    ]
    note_lines = notes(results, provider_names)
    if note_lines:
        sections += ["", "Notes:", *note_lines]
    return "\n".join(sections)
