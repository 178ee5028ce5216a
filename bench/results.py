"""What a benchmark run produces, and its JSON form.

A run is a `RunInfo` dict (device, date, versions, settings) and a list of `Measurement`s, one per
(shape, provider) cell of the table. Ratios to the baseline provider are derived here, not stored
in the measurements, so a saved run can be re-read against another baseline (`--load --baseline`).

JSON schema ("pyfp8gemm-bench/1"):
{
  "schema": "pyfp8gemm-bench/1",
  "run": {"date": ISO-8601, "device": {...}, "versions": {...}, "timing": ..., ...},
  "baseline": "cublas-blockwise",
  "provider_names": {"pyfp8gemm": "pyfp8gemm", ...},
  "results": [{"m", "n", "k", "shape", "provider", "status", "time_ms", "tflops", "gb_per_s",
               "calc_diff", "ratio_to_baseline", "note"}, ...],
  "geomean_ratio_to_baseline": {"pyfp8gemm": 1.31, ...},
  "min_ratio_to_baseline": {"pyfp8gemm": 1.02, ...}
}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bench.metrics import gb_per_s, gemm_bytes, geomean, speed_ratio, tflops
from bench.shapes import Shape

SCHEMA = "pyfp8gemm-bench/1"

# A cell's status: measured, not applicable to this shape, failed, or provider absent here.
OK, SKIPPED, ERROR, UNAVAILABLE = "ok", "skipped", "error", "unavailable"
STATUSES = (OK, SKIPPED, ERROR, UNAVAILABLE)


@dataclass
class Measurement:
    m: int
    n: int
    k: int
    provider: str
    status: str
    time_ms: float | None = None
    tflops: float | None = None
    gb_per_s: float | None = None
    calc_diff: float | None = None
    note: str = ""

    @property
    def shape(self) -> Shape:
        return Shape(self.m, self.n, self.k)

    @classmethod
    def measured(
        cls, shape: Shape, provider: str, operand_format: str, time_ms: float, calc_diff: float | None
    ) -> "Measurement":
        """A successful cell: TFLOPS and GB/s follow from the time."""
        return cls(
            shape.m,
            shape.n,
            shape.k,
            provider,
            OK,
            time_ms=time_ms,
            tflops=tflops(shape, time_ms),
            gb_per_s=gb_per_s(gemm_bytes(shape, operand_format), time_ms),
            calc_diff=calc_diff,
        )

    @classmethod
    def not_measured(cls, shape: Shape, provider: str, status: str, note: str) -> "Measurement":
        assert status in (SKIPPED, ERROR, UNAVAILABLE)
        return cls(shape.m, shape.n, shape.k, provider, status, note=note)


def shapes_in_order(results: list[Measurement]) -> list[Shape]:
    return list(dict.fromkeys(result.shape for result in results))


def providers_in_order(results: list[Measurement]) -> list[str]:
    return list(dict.fromkeys(result.provider for result in results))


def providers_with_data(results: list[Measurement]) -> list[str]:
    """Providers to show as columns: those with at least one cell that is not 'unavailable'."""
    return [
        provider
        for provider in providers_in_order(results)
        if any(r.provider == provider and r.status != UNAVAILABLE for r in results)
    ]


def result_lookup(results: list[Measurement]) -> dict[tuple[Shape, str], Measurement]:
    return {(result.shape, result.provider): result for result in results}


def ratios_to_baseline(results: list[Measurement], baseline: str) -> dict[tuple[Shape, str], float | None]:
    """Speed of each cell relative to the baseline provider on the same shape (>1 is faster)."""
    cells = result_lookup(results)
    ratios = {}
    for (shape, provider), result in cells.items():
        baseline_result = cells.get((shape, baseline))
        baseline_time = baseline_result.time_ms if baseline_result and baseline_result.status == OK else None
        own_time = result.time_ms if result.status == OK else None
        ratios[(shape, provider)] = speed_ratio(own_time, baseline_time)
    return ratios


def geomean_ratios(results: list[Measurement], baseline: str) -> dict[str, float | None]:
    """Per provider, the geometric mean of its ratios to the baseline over the shapes both ran."""
    ratios = ratios_to_baseline(results, baseline)
    return {
        provider: geomean(ratio for (_, p), ratio in ratios.items() if p == provider)
        for provider in providers_in_order(results)
    }


def min_ratios(results: list[Measurement], baseline: str) -> dict[str, float | None]:
    """Per provider, its worst ratio to the baseline (the shape where it is relatively slowest)."""
    ratios = ratios_to_baseline(results, baseline)
    minimum: dict[str, float | None] = {}
    for provider in providers_in_order(results):
        values = [r for (_, p), r in ratios.items() if p == provider and r is not None]
        minimum[provider] = min(values) if values else None
    return minimum


def _finite_or_none(value):
    """JSON has no NaN or Infinity: store those as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_to_json(
    run_info: dict, results: list[Measurement], baseline: str, provider_names: dict[str, str]
) -> dict:
    ratios = ratios_to_baseline(results, baseline)
    rows = []
    for result in results:
        row = {key: _finite_or_none(value) for key, value in asdict(result).items()}
        row["shape"] = result.shape.label
        row["ratio_to_baseline"] = ratios.get((result.shape, result.provider))
        if isinstance(result.calc_diff, float) and not math.isfinite(result.calc_diff):
            row["note"] = (row["note"] + "; " if row["note"] else "") + f"calc_diff was {result.calc_diff}"
        rows.append(row)
    return {
        "schema": SCHEMA,
        "run": run_info,
        "baseline": baseline,
        "provider_names": {p: provider_names.get(p, p) for p in providers_in_order(results)},
        "results": rows,
        "geomean_ratio_to_baseline": geomean_ratios(results, baseline),
        "min_ratio_to_baseline": min_ratios(results, baseline),
    }


def write_json(
    path: str | Path, run_info: dict, results: list[Measurement], baseline: str, provider_names: dict[str, str]
) -> None:
    document = results_to_json(run_info, results, baseline, provider_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def load_json(path: str | Path) -> tuple[dict, list[Measurement], str, dict[str, str]]:
    """Read a file written by write_json: (run_info, results, baseline, provider_names)."""
    document = json.loads(Path(path).read_text())
    if document.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema is {document.get('schema')!r}, expected {SCHEMA!r}")
    field_names = {field.name for field in fields(Measurement)}
    results = [Measurement(**{k: v for k, v in row.items() if k in field_names}) for row in document["results"]]
    return document["run"], results, document["baseline"], document.get("provider_names", {})
