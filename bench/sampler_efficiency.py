"""Search efficiency: hypervolume of the Pareto front after N trials with NSGA-II, TPE and random
sampling, mean over 3 seeds, side by side (nas.search on the shipped sr4x supernet).

    python bench/sampler_efficiency.py [--space inception] [--budget 1G] [--trials 40] [--seeds 0 1 2]

Hypervolume of (val PSNR up, MACs down), dominated region up to the reference point
(lowest PSNR seen in any run, the budget); MACs in G. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from evaluators.macs import parse_macs
from nas.methods.ofa import OfaOptions
from nas.pareto import hypervolume
from nas.search import SAMPLERS, SearchOptions, run_search
from nas.cli import Parser, at_least, run


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="inception")
    p.add_argument("--budget", default="1G")
    p.add_argument("--trials", type=at_least(1), default=40)
    p.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    budget = parse_macs(args.budget)
    runs: dict[str, list[pd.DataFrame]] = {s: [] for s in SAMPLERS}
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in SAMPLERS:
            for seed in args.seeds:
                out = run_search(SearchOptions(space=args.space, budget=budget, trials=args.trials, seed=seed,
                                               sampler=sampler, out=str(Path(tmp) / f"{sampler}-{seed}"),
                                               progress=False, method_options=OfaOptions(finetune_steps=0)),
                                 command="bench")
                runs[sampler].append(pd.read_csv(out / "trials.csv"))
    ok = [t[t["status"] == "ok"] for tables in runs.values() for t in tables]
    q_ref = min(float(t["quality"].min()) for t in ok) - 1e-3
    reference = (q_ref, budget / 1e9)
    print(f"space {args.space}, budget {args.budget}, {args.trials} trials per run, seeds {args.seeds}; "
          f"reference point ({q_ref:.3f} dB, {budget / 1e9:.3g}G)")
    print(f"{'sampler':<10}{'hypervolume (mean)':>20}{'per seed':>30}{'best PSNR (mean)':>18}")
    for sampler, tables in runs.items():
        volumes = [hypervolume(t[t["status"] == "ok"]["macs_torchprofile"] / 1e9, t[t["status"] == "ok"]["quality"],
                               ref_macs=reference[1], ref_quality=reference[0]) for t in tables]
        best = statistics.mean(float(t["quality"].max()) for t in tables)
        print(f"{sampler:<10}{statistics.mean(volumes):>20.4f}{', '.join(f'{v:.4f}' for v in volumes):>30}"
              f"{best:>18.3f}")


if __name__ == "__main__":
    run(main)
