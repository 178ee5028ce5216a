"""The measuring loop (GPU): for each shape, make the inputs once, then let every provider run them.

Providers take turns on each shape, so that all columns of a row are measured minutes apart,
under the same conditions. For each (shape, provider) cell:
1. prepare: the provider builds what it needs (layouts, output buffer), not timed;
2. check: the output is filled with NaN, the GEMM runs once, and calc_diff compares it with the
   fp32 product of the unquantized inputs (an output the kernel failed to write stays NaN);
3. time: the median over many runs, the L2 flushed before each (bench.timing), in `rounds`
   interleaved rounds (round r times the providers in an order rotated by r), and the cell's
   time is the median of its rounds. An H200 running FP8 GEMMs flat out is power-limited: its
   clock drifts by several percent over seconds, and a provider always timed first (or last)
   would see a different clock than the others. Rounds spread that drift over every column.
A provider that fails on one shape gets an "error" cell and the loop goes on.
"""

from __future__ import annotations

import statistics
import sys
from typing import Callable

import torch

from bench.inputs import make_gemm_inputs
from bench.metrics import calc_diff
from bench.providers import Provider, ShapeNotSupported
from bench.results import ERROR, SKIPPED, UNAVAILABLE, Measurement
from bench.shapes import Shape

MAX_NOTE_LENGTH = 300


class Progress:
    """A progress bar on stderr: tqdm when it is installed, else a plain counter."""

    def __init__(self, total: int, enabled: bool = True):
        self.total = total
        self.done = 0
        self.enabled = enabled
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, file=sys.stderr, unit="cell", dynamic_ncols=True)
            except Exception:
                self._bar = None

    def start(self, label: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(label)
        else:
            end = "\r" if sys.stderr.isatty() else "\n"
            sys.stderr.write(f"[{self.done + 1:>3}/{self.total}] {label:<60}{end}")
            sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and sys.stderr.isatty():
            sys.stderr.write("\n")


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text if len(text) <= MAX_NOTE_LENGTH else text[: MAX_NOTE_LENGTH - 3] + "..."


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def check_cell(provider: Provider, inputs):
    """Prepare a provider's GEMM and check its output once: (prepared, calc_diff), or a
    not-measured Measurement (skipped shape, or an error)."""
    shape = inputs.shape
    try:
        prepared = provider.prepare(inputs)
        prepared.output.fill_(float("nan"))
        output = prepared.run()
        _synchronize(str(output.device))
        return prepared, calc_diff(output.float(), inputs.reference)
    except ShapeNotSupported as reason:
        return Measurement.not_measured(shape, provider.key, SKIPPED, str(reason)), None
    except Exception as error:  # one failing cell must not end the run
        return Measurement.not_measured(shape, provider.key, ERROR, _short(error)), None


def measure_cell(
    provider: Provider, inputs, timer: Callable[[Callable[[], object]], float]
) -> Measurement:
    """Check, then time one cell (a single round)."""
    prepared, difference = check_cell(provider, inputs)
    if isinstance(prepared, Measurement):
        return prepared
    try:
        time_ms = timer(prepared.run)
    except Exception as error:
        return Measurement.not_measured(inputs.shape, provider.key, ERROR, _short(error))
    return Measurement.measured(inputs.shape, provider.key, provider.operand_format, time_ms, difference)


def _measure_shape(providers, inputs, timer, rounds, unavailable, progress) -> list[Measurement]:
    """Every provider on one shape: check each, then time them in interleaved rounds."""
    cells: dict[str, object] = {}
    for provider in providers:
        if unavailable[provider.key] is not None:
            cells[provider.key] = Measurement.not_measured(
                inputs.shape, provider.key, UNAVAILABLE, unavailable[provider.key])
        else:
            cells[provider.key] = check_cell(provider, inputs)
    times: dict[str, list[float]] = {provider.key: [] for provider in providers}
    for r in range(rounds):
        order = providers[r % len(providers):] + providers[: r % len(providers)]
        for provider in order:
            cell = cells[provider.key]
            if isinstance(cell, Measurement) or isinstance(cell[0], Measurement):
                continue
            progress.start(f"{inputs.shape.label} {provider.name} ({r + 1}/{rounds})")
            try:
                times[provider.key].append(timer(cell[0].run))
            except Exception as error:
                cells[provider.key] = Measurement.not_measured(
                    inputs.shape, provider.key, ERROR, _short(error))
    results = []
    for provider in providers:
        cell = cells[provider.key]
        if isinstance(cell, Measurement):
            results.append(cell)
        elif isinstance(cell[0], Measurement):
            results.append(cell[0])
        else:
            results.append(Measurement.measured(inputs.shape, provider.key, provider.operand_format,
                                                statistics.median(times[provider.key]), cell[1]))
        progress.advance()
    return results


def run_benchmark(
    shapes: list[Shape],
    providers: list[Provider],
    timer: Callable[[Callable[[], object]], float],
    seed: int = 0,
    show_progress: bool = True,
    device: str = "cuda",
    rounds: int = 1,
) -> list[Measurement]:
    """Measure every (shape, provider) cell; `device` other than "cuda" is for tests on the CPU.
    Each cell's time is the median of `rounds` interleaved rounds (see the module docstring)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    unavailable = {provider.key: provider.unavailable_reason() for provider in providers}
    progress = Progress(len(shapes) * len(providers), enabled=show_progress)
    results: list[Measurement] = []
    try:
        for shape_index, shape in enumerate(shapes):
            try:
                inputs = make_gemm_inputs(shape, seed + shape_index, device)
            except Exception as error:  # e.g. out of memory for a huge shape
                note = f"making the inputs: {_short(error)}"
                for provider in providers:
                    reason = unavailable[provider.key]
                    results.append(Measurement.not_measured(shape, provider.key, UNAVAILABLE, reason)
                                   if reason is not None else
                                   Measurement.not_measured(shape, provider.key, ERROR, note))
                    progress.advance()
                continue
            results.extend(_measure_shape(list(providers), inputs, timer, rounds, unavailable,
                                          progress))
            del inputs
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()  # the next shape may need the memory
    finally:
        progress.close()
    return results
