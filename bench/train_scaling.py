"""Data-parallel training's scaling: steps/s of ``nas.train`` with one process against Ray Train workers.

    python bench/train_scaling.py [--what teacher|supernet] [--steps 60] [--batch-size 16] [--crop 64]
    python bench/train_scaling.py --gpus-per-worker 1 --workers 1 2 4 8 --device cuda   # on a GPU machine

On this machine's 2 CPU cores it compares one process with 2 threads against 2 workers with 1 thread
each, side by side in one run (the machine is shared: compare the ratio, not the absolute figures).
Each run trains the same steps of the embedded task from scratch; the figure is the steps after a
warm-up (``--stop-at`` at the warm-up, then ``--resume`` timed), so start-up (Ray, workers, the
teacher's reference) is left out, and it is printed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from nas.cli import Parser, at_least, run
from nas.files import check_output_file

ROOT = Path(__file__).resolve().parents[1]


def command(what: str, out: Path, args: argparse.Namespace, *, steps: int, workers: int, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "nas.train", what, "--out", str(out), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--crop", str(args.crop), "--eval-every", str(10 ** 6),
           "--checkpoint-every", str(10 ** 6), "--device", args.device, "--no-progress", "--stop-at", str(steps)]
    if what == "teacher":
        cmd += ["--space", "spaces/sr4x/teacher.yaml"]
    else:
        cmd += ["--space", "spaces/sr4x/resnet.yaml", "--teacher", "weights/sr4x/teacher.pth"]
    if workers > 1 or args.gpus_per_worker:
        cmd += ["--workers", str(workers)]
        if args.gpus_per_worker:
            cmd += ["--gpus-per-worker", str(args.gpus_per_worker)]
    return cmd + (["--resume"] if resume else [])


def timed(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "RAY_AUTH_MODE": "disabled"}
    began = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", default="supernet", choices=["teacher", "supernet"])
    p.add_argument("--steps", type=at_least(1), default=60, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=at_least(0), default=5)
    p.add_argument("--batch-size", type=at_least(1), default=16)
    p.add_argument("--crop", type=at_least(4), default=64)
    p.add_argument("--workers", type=at_least(1), nargs="+", default=[1, 2])
    p.add_argument("--threads", type=at_least(1), default=os.cpu_count() or 2, help="the cores shared by the workers")
    p.add_argument("--gpus-per-worker", type=at_least(0, float), default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    if args.json:
        check_output_file(args.json, "--json")
    args.steps += args.warmup
    rows = []
    for workers in args.workers:
        threads = max(1, args.threads // workers)
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "run"
            start = timed(command(args.what, out, args, steps=args.warmup, workers=workers, resume=False), threads)
            total = timed(command(args.what, out, args, steps=args.steps, workers=workers, resume=True), threads)
        timed_steps = args.steps - args.warmup
        # The resumed run pays the start-up again: subtract the warm-up run's time less its few steps.
        rows.append({"workers": workers, "threads_each": threads, "startup_s": round(start, 1),
                     "resumed_s": round(total, 1), "timed_steps": timed_steps})
        print(f"{workers} worker(s) x {threads} thread(s): warm-up run {start:.1f} s, {timed_steps} more steps "
              f"(resumed, start-up included) {total:.1f} s", flush=True)
    base = rows[0]
    for row in rows:
        # Start-up is paid by both runs of a row; the resumed run's steps are its time less the warm-up run's.
        row["steps_per_s"] = round(row["timed_steps"] / max(1e-6, row["resumed_s"] - row["startup_s"]), 3)
        row["speedup"] = round(row["steps_per_s"] / base["steps_per_s"], 2)
    print(json.dumps(rows, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
