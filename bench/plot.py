"""A picture of a benchmark run (matplotlib, written to a PNG).

Top panel: TFLOPS per shape, one bar per provider, grouped by shape (labelled MxNxK).
Bottom panel: each provider's speed relative to the baseline (cuBLAS block-wise), with a line at
1.0: bars above it are faster than cuBLAS. The legend gives each provider's geometric mean.
"""

from __future__ import annotations

from pathlib import Path

from bench.results import OK, Measurement, geomean_ratios, providers_with_data, ratios_to_baseline, result_lookup
from bench.results import shapes_in_order

# One fixed colour per provider, so that plots of different runs read the same way.
PROVIDER_COLOURS = {
    "pyfp8gemm": "#d62728",  # red: the library under test stands out
    "deepgemm": "#2ca02c",  # green
    "cublas-blockwise": "#1f77b4",  # blue: the baseline
    "cublas-tensorwise": "#9ecae1",  # light blue: cuBLAS without fine-grained scales
    "torch-bf16": "#8c8c8c",  # grey
}
FALLBACK_COLOURS = ("#9467bd", "#ff7f0e", "#17becf", "#bcbd22", "#e377c2")


def matplotlib_is_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except Exception:
        return False
    return True


def provider_colour(provider: str, index: int) -> str:
    return PROVIDER_COLOURS.get(provider, FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)])


def plot_results(
    path: str | Path,
    results: list[Measurement],
    baseline: str,
    provider_names: dict[str, str],
    title: str = "",
) -> Path:
    """Write the figure to `path` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    shapes = shapes_in_order(results)
    providers = providers_with_data(results)
    cells = result_lookup(results)
    ratios = ratios_to_baseline(results, baseline)
    geomeans = geomean_ratios(results, baseline)
    ratio_providers = [p for p in providers if p != baseline]

    figure_width = max(8.0, 0.75 * len(shapes) + 3.0)
    figure, (tflops_axes, ratio_axes) = plt.subplots(
        2, 1, figsize=(figure_width, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    positions = list(range(len(shapes)))

    # Top: grouped TFLOPS bars.
    bar_width = 0.8 / max(1, len(providers))
    for index, provider in enumerate(providers):
        offsets = [x - 0.4 + bar_width * (index + 0.5) for x in positions]
        heights = []
        for shape in shapes:
            result = cells.get((shape, provider))
            heights.append(result.tflops if result is not None and result.status == OK else 0.0)
        label = provider_names.get(provider, provider)
        if not any(heights):
            label += " (no data: see the table's notes)"
        elif provider != baseline and geomeans.get(provider) is not None:
            label += f" (geomean {geomeans[provider]:.2f}x)"
        bars = tflops_axes.bar(offsets, heights, bar_width, label=label, color=provider_colour(provider, index))
        if index == 0:  # write the numbers of the first column (the library under test) on its bars
            tflops_axes.bar_label(
                bars, labels=[f"{h:.0f}" if h else "" for h in heights], rotation=90, padding=2, fontsize=7
            )
    tflops_axes.set_ylabel("TFLOPS")
    legend_columns = max(1, min(len(providers), int(figure_width // 4)))
    legend_rows = -(-len(providers) // legend_columns)
    tallest = max([r.tflops for r in results if r.status == OK and r.tflops] or [1.0])
    tflops_axes.set_ylim(0, tallest * (1.15 + 0.08 * legend_rows))  # headroom: bar labels and legend
    tflops_axes.grid(axis="y", alpha=0.3)
    tflops_axes.set_axisbelow(True)
    tflops_axes.legend(loc="upper left", fontsize=8, ncol=legend_columns)
    if title:
        tflops_axes.set_title(title, fontsize=10)

    # Bottom: ratio to the baseline, a line at 1.0.
    baseline_name = provider_names.get(baseline, baseline)
    ratio_bar_width = 0.8 / max(1, len(ratio_providers))
    for index, provider in enumerate(ratio_providers):
        offsets = [x - 0.4 + ratio_bar_width * (index + 0.5) for x in positions]
        heights = [ratios.get((shape, provider)) or 0.0 for shape in shapes]
        colour = provider_colour(provider, providers.index(provider))
        ratio_axes.bar(offsets, heights, ratio_bar_width, color=colour)
    ratio_axes.axhline(1.0, color="black", linewidth=1.0)
    if ratio_providers and geomeans.get(ratio_providers[0]) is not None:
        first = ratio_providers[0]  # the library under test: its geomean as a dashed line
        ratio_axes.axhline(
            geomeans[first], color=provider_colour(first, providers.index(first)), linewidth=1.0, linestyle="--",
            label=f"{provider_names.get(first, first)} geomean {geomeans[first]:.2f}x",
        )
        ratio_axes.legend(loc="upper right", fontsize=8)
    ratio_axes.set_ylabel(f"speed vs {baseline_name}\n(1.0 = as fast)")
    ratio_axes.grid(axis="y", alpha=0.3)
    ratio_axes.set_axisbelow(True)

    ratio_axes.set_xticks(positions)
    ratio_axes.set_xticklabels([shape.label for shape in shapes], rotation=45, ha="right", fontsize=8)
    ratio_axes.set_xlabel("M x N x K")
    ratio_axes.set_xlim(-0.6, len(shapes) - 0.4)

    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path
