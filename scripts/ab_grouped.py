"""A/B timing of m-grouped GEMM configurations on one of the grouped benchmark's cases, next to
the heuristic's pick and DeepGEMM, launches interleaved in rounds (ab_time.py's method).

    python scripts/ab_grouped.py KIND INDEX [SPEC ...] [--rounds R] [--twins]

KIND: m-grouped-contiguous or m-grouped-masked; INDEX: the case's position in
`bench.grouped.make_cases(KIND)` (printed with --list); SPEC: scripts/config_spec.py's (e.g.
128x192:b, a 2-CTA cluster sharing B; 128x192:b::3, three stages; s64x8, swap-AB; "generic": the
heuristic's pick without its compiled shape, GemmConfig.compiled_shape). Each config
goes through the public function (the same layout preparation), with the launcher told to use
it. Printed: median microseconds, TFLOPS of the
valid rows, DeepGEMM's time over each contender's, and each output's check (NaN-poisoned,
calc_diff on the valid rows). --twins times a second copy of every contender (own output
tensor): the spread between identical kernels is the run's resolution.
"""
import argparse
import dataclasses
import statistics

from bench import grouped
from bench.timing import interleaved_times
from config_spec import parse
from pyfp8gemm.host import heuristics, launch, launchers

FORCED = {"config": None}


def generic_choice(key):
    """The heuristic's pick for a launch (its launch.grouped_key), compiled for any shape."""
    return heuristics.choose_m_grouped(key.problem, launch.get_num_sms(key.device))


def force_configs():
    """The launchers, with the forced config (None: the heuristic's) passed to the launch."""
    def launch_forced(*args):
        config = FORCED["config"]
        if config == "generic":
            config = generic_choice(launch.grouped_key(*args))
        launch.launch_grouped(*args, config=config)

    def contiguous(a_data, a_scale, b_data, b_scale, d, m_indices, expected_m, alignment):
        launch_forced("m_grouped_contiguous", a_data, a_scale, b_data, b_scale, d, m_indices,
                      b_data.shape[0], expected_m, alignment)

    def masked(a_data, a_scale, b_data, b_scale, d, masked_m, expected_m):
        launch_forced("m_grouped_masked", a_data, a_scale, b_data, b_scale, d, masked_m,
                      b_data.shape[0], expected_m)

    launchers.m_grouped_contiguous, launchers.m_grouped_masked = contiguous, masked


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=grouped.KINDS)
    parser.add_argument("index", type=int, nargs="?", default=0)
    parser.add_argument("specs", nargs="*")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--twins", action="store_true",
                        help="a second copy of every contender (its own output tensor): the "
                             "spread between identical kernels, i.e. the run's resolution")
    parser.add_argument("--rows", type=int, default=None,
                        help="every group's rows (masked_m / group size) set to this")
    args = parser.parse_args()
    cases = grouped.make_cases(args.kind)
    if args.list:
        for i, case in enumerate(cases):
            print(i, case.label)
        return
    case = cases[args.index]
    if args.rows is not None:
        case = dataclasses.replace(case, group_m=(args.rows,) * case.groups,
                                   m_max=max(case.m_max, -(-args.rows // 128) * 128))
    inputs = grouped.make_inputs(case, args.index)
    force_configs()
    schedule = args.kind.replace("-", "_")
    contenders = {}

    def forced(config, run):
        def call():
            FORCED["config"] = config
            return run()
        return call

    configs = {"heuristic": None}
    configs.update({spec: spec if spec == "generic" else parse(spec, schedule).config
                    for spec in args.specs})
    copies = ("", "#2") if args.twins else ("",)
    for copy in copies:           # each copy prepares its own output tensor
        for name, config in configs.items():
            contenders[name + copy] = forced(config, grouped.prepare_pyfp8gemm(case, inputs))
    for copy in copies:
        try:
            contenders["DeepGEMM" + copy] = grouped.prepare_deepgemm(case, inputs)
        except Exception as error:           # NotAvailable, or no deep_gemm here
            print(f"(DeepGEMM left out: {error})")
            break
    for name in list(contenders):
        try:
            for _ in range(5):
                contenders[name]()
        except ValueError as error:          # a config this case cannot run
            print(f"({name} left out: {error})")
            del contenders[name]
    times = {name: statistics.median(t) * 1e3          # (warmed up above)
             for name, t in interleaved_times(contenders, args.rounds, warmup=0).items()}
    checks = {name: check(run, case, inputs) for name, run in contenders.items()}
    flops = case.flops()
    print(f"{case.label}, {args.rounds} interleaved rounds")
    for name, us in times.items():
        vs = f"vs DeepGEMM x{times['DeepGEMM'] / us:.3f}" if "DeepGEMM" in times else ""
        print(f"  {name:12} {us:8.1f} us {flops / us / 1e6:6.0f} TFLOPS  {vs:18} {checks[name]}")


def check(run, case, inputs) -> str:
    """One more run into a NaN-poisoned output, checked (WRONG past the FP8 bound)."""
    diff, nan_left = grouped.checked_run(case, inputs, run)
    wrong = " WRONG" if nan_left or not diff < 1e-3 else ""
    return f"diff {diff:.1e}, NaN {nan_left}{wrong}"


if __name__ == "__main__":
    main()
