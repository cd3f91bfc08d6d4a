"""A method that trains per trial (kd, prune, dmask, agd) on sr4x: its search, its students then judged on
the test split.

    python bench/method_sr4x.py --method kd [--space resnet] [--budget 0.5G] [--trials 2] [--out DIR] [METHOD FLAGS]
    python bench/method_sr4x.py --method prune --space inception
    python bench/method_sr4x.py --method dmask --space resnet --search-steps 200
    python bench/method_sr4x.py --method agd --space agd

Runs ``python -m nas.search --method M`` (the command users run; other flags go to it) on the embedded
default, then loads every trial's student from the run's storage and measures it on the whole test
photos against the shipped teacher: PSNR, SSIM and the share of the teacher's gain over bicubic; with
the trial's MACs, wall and CPU seconds. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from evaluators.quality import evaluate_on, format_share, reference
from nas.checkpoint import load_generator
from nas.data import load_task
from nas.defaults import default_teacher
from nas.cli import Parser, at_least, run
from nas.files import check_output_folder


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="kd", choices=("kd", "prune", "dmask", "agd"))
    p.add_argument("--space", default="resnet")
    p.add_argument("--budget", default="0.5G")
    p.add_argument("--trials", type=at_least(1), default=2)
    p.add_argument("--out", help="the search's folder (default runs/bench_METHOD)")
    args, method_flags = p.parse_known_args(argv)
    check_output_folder(args.out or f"runs/bench_{args.method}", "--out")
    out = Path(args.out or f"runs/bench_{args.method}")
    command = [sys.executable, "-m", "nas.search", "--method", args.method, "--space", args.space, "--budget",
               args.budget, "--trials", str(args.trials), "--out", str(out), "--no-progress", *method_flags]
    if not (out / "run.json").exists() or json.loads((out / "run.json").read_text()).get("status") != "finished":
        began = time.perf_counter()
        resume = ["--resume"] if (out / "run.json").exists() else []
        done = subprocess.run(command[:3] + ["--out", str(out), "--resume", "--no-progress"] if resume else command)
        if done.returncode:  # the search said why (one line for bad input): stop with its code
            raise SystemExit(done.returncode)
        print(f"search: {time.perf_counter() - began:.0f} s wall")
    print("command: python -m nas.search " + " ".join(command[3:]))
    table = pd.read_csv(out / "trials.csv", dtype={"trial_id": str, "config": str, "details_json": str})
    task = load_task("sr4x")
    teacher = load_generator(default_teacher("sr4x", None))
    test = reference(teacher.module, task.eval_set("test"))
    t_macs = teacher.space.macs(teacher.config)
    print(f"test split (whole photos): teacher {test.teacher.psnr:.2f} dB, bicubic {test.baseline.psnr:.2f} dB "
          f"(+{test.teacher_gain:.2f} dB); teacher {t_macs / 1e9:.3f}G MACs")
    print(f"{'trial':<10}{'target':>9}{'MACs':>9}{'x fewer':>9}{'val PSNR (share)':>20}"
          f"{'test PSNR (share)':>20}{'test SSIM':>11}{'wall s':>8}{'CPU s':>8}  config")
    for _, row in table[table["status"] == "ok"].iterrows():
        student = load_generator(row["weights"]).module
        q = evaluate_on(student, test.eval_set, test)
        target = json.loads(row["params_json"])["target"]
        print(f"{row['trial_id']:<10}{target / 1e9:>8.3f}G{row['macs_torchprofile'] / 1e9:>8.3f}G"
              f"{t_macs / row['macs_torchprofile']:>9.1f}"
              f"{f'{row.psnr:.2f} ({format_share(row.share)})':>20}{f'{q.psnr:.2f} ({format_share(q.share)})':>20}"
              f"{q.ssim:>11.3f}{row['seconds']:>8.0f}{row['cpu_seconds']:>8.0f}  {row['config']}")
        if isinstance(row.get("details_json"), str):
            print(f"{'':<10}details: {row['details_json']}")
    for _, row in table[table["status"] != "ok"].iterrows():
        print(f"{row['trial_id']:<10}failed: {row['error']}")


if __name__ == "__main__":
    run(main)
