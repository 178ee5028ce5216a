"""Kernel configurations written on the command line, for the tuning scripts.

Spec: BMxBN[:mc[:group[:stages[:noovl[:split]]]]], plus flags anywhere after the tile:
":turn" / ":noturn" force mma_turns on / off (default: GemmConfig's choice), and, with
bench/experiments/ablation-nopromote.patch applied, ":nopromote" / ":nomma".
split: "4" splits every tile's K in 4, "4w" only the last wave's tiles (split_last_wave).
"""
from pyfp8gemm.device.gemm_1d2d import GemmConfig
from pyfp8gemm.host.heuristics import stages_for

FLAGS = ("turn", "noturn", "nopromote", "nomma")


def parse(spec: str) -> GemmConfig:
    parts = spec.split(":")
    flags = [p for p in parts if p in FLAGS]
    parts = [p for p in parts if p not in FLAGS]
    turns = True if "turn" in flags else False if "noturn" in flags else None
    extra = {"ablation": p for p in flags if p in ("nopromote", "nomma")}
    bm, bn = map(int, parts[0].split("x"))
    mc = parts[1] if len(parts) > 1 and parts[1] else "none"
    group = int(parts[2]) if len(parts) > 2 and parts[2] else 16
    stages = int(parts[3]) if len(parts) > 3 and parts[3] else stages_for(bm, bn)
    overlap = not (len(parts) > 4 and parts[4] == "noovl")
    split = parts[5] if len(parts) > 5 and parts[5] else "1"
    return GemmConfig(bm, bn, stages, mc, group, overlap, split_k=int(split.rstrip("w")),
                      split_last_wave=split.endswith("w"), mma_turns=turns, **extra)
