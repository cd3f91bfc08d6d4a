"""Search overhead: does the cost per candidate stay flat as a search grows, and what does Ray add?

    python bench/search_overhead.py [--trials 2000] [--repeats 3] [--compare REV --compare-trials 200]
    python bench/search_overhead.py --shipped [--trials 80]     # the old loop comparison, shipped supernet

Default: ``nas.search`` (``ofa``, NSGA-II) over a tiny inception supernet trained on the spot (8
channels, whole val photos), so that candidates are cheap and the driver's own work shows. Per
repeat it reports candidates/s over the first and the last 100 trials (from the completion stamps
in trials.csv), and the driver's per-trial seconds from ``overhead.csv``, split into the project's
own work (searcher, callbacks, results table) and what Optuna adds (its sampler, the SQLite
record). ``--compare REV`` also runs a search of ``--compare-trials`` with the code of git revision
REV (a worktree) and with this code, one after the other, and compares their steady-state rates.

``--shipped``: candidates/s through nas.search on the shipped sr4x supernet against a plain
in-process loop evaluating the same candidates with the same code. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from nas.cli import Parser, at_least, run
from spaces.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "3", "--batch-size", "2", "--crop", "32", "--eval-every", "3", "--checkpoint-every", "3",
        "--no-progress", "--device", "cpu"]


def tiny_models(folder: Path) -> tuple[Path, Path]:
    teacher, supernet = folder / "teacher", folder / "supernet"
    subprocess.run([sys.executable, "-m", "nas.train", "teacher", "--space", "tests/spaces/tiny_teacher.yaml",
                    "--out", str(teacher), *TINY], check=True, cwd=ROOT, capture_output=True)
    subprocess.run([sys.executable, "-m", "nas.train", "supernet", "--space", "tests/spaces/tiny_inception.yaml",
                    "--teacher", str(teacher / "checkpoint.pth"), "--out", str(supernet), *TINY], check=True,
                   cwd=ROOT, capture_output=True)
    return teacher / "checkpoint.pth", supernet / "checkpoint.pth"


def search(code: Path, out: Path, teacher: Path, supernet: Path, trials: int, seed: int) -> float:
    """One search with the code in ``code``; returns its wall seconds."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas.search", "--space", "tests/spaces/tiny_inception.yaml", "--budget",
                    "30M", "--teacher", str(teacher), "--supernet", str(supernet), "--trials", str(trials), "--seed",
                    str(seed), "--out", str(out), "--no-progress", "--finetune-steps", "0"],
                   check=True, cwd=code, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - began


def rate(stamps: pd.Series) -> float:
    """Candidates per second between the first and the last of ``stamps``."""
    stamps = stamps.sort_values()
    return (len(stamps) - 1) / max(1e-9, (stamps.iloc[-1] - stamps.iloc[0]).total_seconds())


def flatness(out: Path, window: int) -> dict[str, float]:
    table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    stamps = pd.to_datetime(table["finished_at"]).sort_values().reset_index(drop=True)
    overhead = pd.read_csv(out / "overhead.csv")
    first, last = overhead.head(window), overhead.tail(window)
    return {"rate_first": rate(stamps.head(window)), "rate_last": rate(stamps.tail(window)),
            "rate_all": rate(stamps),
            **{f"{part}_{end}": float(frame[f"{part}_s"].mean()) * 1e3
               for part in ("project", "sampler", "record") for end, frame in (("first", first), ("last", last))}}


def flat_main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher, supernet = tiny_models(tmp / "models")
        rows = []
        for repeat in range(args.repeats):
            out = tmp / f"run-{repeat}"
            wall = search(ROOT, out, teacher, supernet, args.trials, seed=repeat)
            rows.append({"repeat": repeat, "wall": wall, **flatness(out, args.window)})
            r = rows[-1]
            print(f"repeat {repeat}: {args.trials} trials in {wall:.0f} s; candidates/s first {args.window} "
                  f"{r['rate_first']:.2f}, last {r['rate_last']:.2f} (ratio {r['rate_last'] / r['rate_first']:.3f}); "
                  f"driver ms per trial, first -> last: project {r['project_first']:.2f} -> {r['project_last']:.2f}, "
                  f"Optuna sampler {r['sampler_first']:.2f} -> {r['sampler_last']:.2f}, SQLite record "
                  f"{r['record_first']:.2f} -> {r['record_last']:.2f}", flush=True)
        frame = pd.DataFrame(rows)
        print(f"\nmean of {args.repeats} repeats, {args.trials} trials each (ofa, NSGA-II, tiny inception supernet):")
        print(f"  whole search, candidates/s last {args.window} / first {args.window}: "
              f"{(frame['rate_last'] / frame['rate_first']).mean():.3f}")
        print(f"  project's own per-trial work, first {args.window} / last {args.window} (time ratio, 1 = flat): "
              f"{(frame['project_first'] / frame['project_last']).mean():.3f} "
              f"({frame['project_first'].mean():.2f} -> {frame['project_last'].mean():.2f} ms)")
        print(f"  Optuna's sampler per trial: {frame['sampler_first'].mean():.2f} -> {frame['sampler_last'].mean():.2f} ms;"
              f" the SQLite record: {frame['record_first'].mean():.2f} -> {frame['record_last'].mean():.2f} ms")
        if args.compare:
            old = tmp / "old-code"
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.compare], check=True, cwd=ROOT,
                           capture_output=True)
            try:
                results = {}
                for label, code in (("old", old), ("new", ROOT), ("old again", old), ("new again", ROOT)):
                    out = tmp / f"compare-{label.replace(' ', '-')}"
                    search(code, out, teacher, supernet, args.compare_trials, seed=0)
                    table = pd.read_csv(out / "trials.csv")
                    results[label] = rate(pd.to_datetime(table["finished_at"]))
                    print(f"  {label} code ({args.compare if 'old' in label else 'this tree'}): "
                          f"{results[label]:.2f} candidates/s over {args.compare_trials} trials", flush=True)
                old_rate = (results["old"] + results["old again"]) / 2
                new_rate = (results["new"] + results["new again"]) / 2
                print(f"  steady state, new / old (interleaved, two runs each): {new_rate / old_rate:.3f}")
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)


def shipped_main(args: argparse.Namespace) -> None:
    from evaluators.macs import parse_macs
    from nas.methods.ofa import OfaOptions
    from nas.search import SearchOptions, prepare, run_search

    with tempfile.TemporaryDirectory() as tmp:
        options = SearchOptions(space="inception", budget=parse_macs("1G"), trials=args.trials,
                                out=str(Path(tmp) / "run"), sampler="random", progress=False,
                                method_options=OfaOptions(finetune_steps=0))
        began = time.perf_counter()
        out = run_search(options, command="bench")
        total = time.perf_counter() - began
        table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    steady = rate(pd.to_datetime(table["finished_at"]))
    method = prepare(options)
    method.load()
    configs = [method.space.decode(c) for c in table["config"]]
    began = time.perf_counter()
    for config in configs:
        method.start(config).step()
    loop = len(configs) / (time.perf_counter() - began)
    print(f"{len(configs)} candidates of space inception under 1G, {torch.get_num_threads()} torch "
          f"threads in the loop; Ray runs one trial per CPU")
    print(f"{'':<34}{'candidates/s':>14}{'ratio':>8}")
    print(f"{'plain in-process loop':<34}{loop:>14.3f}{1.0:>8.2f}")
    print(f"{'nas.search, steady state':<34}{steady:>14.3f}{steady / loop:>8.2f}")
    print(f"{'nas.search, incl. Ray start-up':<34}{len(table) / total:>14.3f}{len(table) / total / loop:>8.2f}")


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=at_least(1), default=2000)
    p.add_argument("--repeats", type=at_least(1), default=3)
    p.add_argument("--window", type=at_least(1), default=100)
    p.add_argument("--compare", help="a git revision whose search to time beside this code's")
    p.add_argument("--compare-trials", type=at_least(1), default=200)
    p.add_argument("--shipped", action="store_true", help="the loop comparison on the shipped supernet")
    args = p.parse_args(argv)
    if not args.shipped and args.trials < 2 * args.window:
        raise UserError(f"--trials {args.trials} must be at least twice --window {args.window}: the rate of the first "
                        "window is compared with the last one's")
    shipped_main(args) if args.shipped else flat_main(args)


if __name__ == "__main__":
    run(main)
