"""Search overhead: candidates per second through nas.search (Ray Tune + Optuna) against a plain
in-process loop that evaluates the same candidates with the same code, in one run.

    python bench/search_overhead.py [--space inception] [--budget 1G] [--trials 80]

Both use the shipped sr4x supernet; the search exports its best without fine-tuning (this measures
the evaluation of candidates). The search runs first; the loop then evaluates the configs
the search evaluated. Steady-state throughput of the search is read off the completion stamps in
trials.csv (first to last trial); the total includes Ray's start-up. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from evaluators.macs import parse_macs
from nas.methods.ofa import OfaOptions
from nas.search import SearchOptions, prepare, run_search


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="inception")
    p.add_argument("--budget", default="1G")
    p.add_argument("--trials", type=int, default=80)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        options = SearchOptions(space=args.space, budget=parse_macs(args.budget), trials=args.trials,
                                out=str(Path(tmp) / "run"), sampler="random", progress=False,
                                method_options=OfaOptions(finetune_steps=0))
        began = time.perf_counter()
        out = run_search(options, command="bench")
        total = time.perf_counter() - began
        table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    stamps = pd.to_datetime(table["finished_at"]).sort_values()
    steady = (len(stamps) - 1) / (stamps.iloc[-1] - stamps.iloc[0]).total_seconds()

    method = prepare(options)
    method.load()
    configs = [method.space.decode(c) for c in table["config"]]
    began = time.perf_counter()
    for config in configs:
        method.start(config).step()
    loop = len(configs) / (time.perf_counter() - began)

    print(f"{len(configs)} candidates of space {args.space} under {args.budget}, {torch.get_num_threads()} torch "
          f"threads in the loop; Ray runs one trial per CPU")
    print(f"{'':<34}{'candidates/s':>14}{'ratio':>8}")
    print(f"{'plain in-process loop':<34}{loop:>14.3f}{1.0:>8.2f}")
    print(f"{'nas.search, steady state':<34}{steady:>14.3f}{steady / loop:>8.2f}")
    print(f"{'nas.search, incl. Ray start-up':<34}{len(table) / total:>14.3f}{len(table) / total / loop:>8.2f}")


if __name__ == "__main__":
    main()
