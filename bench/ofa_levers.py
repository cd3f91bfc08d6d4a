"""Where the students' quality goes: one lever of supernet training changed at a time, measured on val.

    python bench/ofa_levers.py [--levers base distill1.0 ...] [--out runs/levers] [--evaluate-only]

Each lever is the resnet supernet's 3000-step training command (the shipped supernets' command
before training length was measured) with one change (``LEVERS``); ``base`` is that command as it is.
Runs that are missing are trained (resumed where a checkpoint is there: long runs can be stopped
and continued); then, for each, the 1/10 subnet chosen on the base supernet (the same architecture
for every lever) is measured on the val split (whole photos) with inherited weights and after the
fine-tune that ``nas.search`` gives its best student, beside the largest subnet. Deltas are against
``base``. Val only: these runs choose a recipe, so the test split is not looked at.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from evaluators.quality import MIN_TEACHER_GAIN_DB, evaluate_on, format_share, reference
from nas.checkpoint import load_generator, safe_load
from nas.data import load_task
from nas.export import finetune_subnet
from nas.files import atomic_write_text, check_output_file, check_output_folder
from nas.checkpoint import load_supernet
from nas.methods.ofa import FINETUNE_STEPS
from nas.cli import Parser, at_least, run
from ofa_sr4x import pick_subnet

BASE = ["supernet", "--space", "spaces/sr4x/resnet.yaml", "--teacher", "weights/sr4x/teacher.pth", "--method", "ofa",
        "--distill-weight", "0.3", "--distill-layers", "3", "--task", "sr4x", "--steps", "3000", "--batch-size", "16",
        "--crop", "64", "--lr", "0.0004", "--seed", "0", "--eval-every", "1000", "--checkpoint-every", "500",
        "--device", "cpu", "--no-progress"]
LEVERS = {
    "base": [],  # the 3000-step command
    "steps6000": ["--steps", "6000"],  # training length
    "distill1.0": ["--distill-weight", "1.0"],  # distillation weight
    "layers6": ["--distill-layers", "6"],  # distillation layers: every trunk block instead of 3
    "lr1e-3": ["--lr", "0.001"],  # learning rate
    "no-max": ["--sandwich", "min,random,random,random"],  # sandwich schedule: the largest subnet's steps go to random ones
}


def train_lever(name: str, out: Path) -> Path:
    """Train (or resume) one lever's supernet into ``out/name``; returns its checkpoint."""
    folder = out / name
    checkpoint = folder / "checkpoint.pth"
    argv = [*BASE, *LEVERS[name], "--out", str(folder)]
    if checkpoint.exists():
        record = safe_load(checkpoint)
        if record["step"] >= record["args"]["steps"]:
            return checkpoint
        argv.append("--resume")
    print("python -m nas.train " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "nas.train", *argv], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    p.add_argument("--out", default="runs/levers")
    p.add_argument("--fraction", type=at_least(1), default=10)
    p.add_argument("--finetune-steps", type=at_least(0), default=FINETUNE_STEPS)
    p.add_argument("--evaluate-only", action="store_true", help="measure the runs that are there, train nothing")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if args.json:
        check_output_file(args.json, "--json")
    check_output_folder(args.out, "--out")
    out = Path(args.out)
    levers = ["base", *[lever for lever in args.levers if lever != "base"]]
    task = load_task("sr4x")
    teacher = load_generator("weights/sr4x/teacher.pth")
    ref = reference(teacher.module, task.eval_set("val"))
    if ref.teacher_gain is None or ref.teacher_gain < MIN_TEACHER_GAIN_DB:
        sys.exit(f"the teacher is not {MIN_TEACHER_GAIN_DB} dB above bicubic on val: no share can rank students")
    rows, config = [], None
    for name in levers:
        checkpoint = out / name / "checkpoint.pth"
        if not args.evaluate_only:
            train_lever(name, out)
        if not checkpoint.exists():
            print(f"{name}: no checkpoint at {checkpoint}; skipped")
            continue
        supernet, record = load_supernet(checkpoint)
        target_steps = record["args"]["steps"]
        if record["step"] < target_steps:
            print(f"{name}: stopped at step {record['step']} of {target_steps}; skipped (resume it first)")
            continue
        space = supernet.space
        if config is None:  # chosen once, on the base supernet: every lever is measured on one architecture
            config, _ = pick_subnet(supernet, teacher.space.macs(teacher.config) / args.fraction, ref)
        largest = evaluate_on(supernet.extract(space.max_config()), ref.eval_set, ref)
        inherited = evaluate_on(supernet.extract(config), ref.eval_set, ref)
        tuned = evaluate_on(finetune_subnet(supernet.extract(config), record, teacher.module, task,
                                            steps=args.finetune_steps, progress=False), ref.eval_set, ref)
        rows.append({"lever": name, "change": " ".join(LEVERS[name]) or "(3000-step command)",
                     "train_seconds": record["train_seconds"], "max_psnr": largest.psnr, "psnr": inherited.psnr,
                     "share": inherited.share, "finetuned_psnr": tuned.psnr, "finetuned_share": tuned.share})
        print(f"{name}: max {largest.psnr:.3f}, 1/{args.fraction} inherited {inherited.psnr:.3f} "
              f"({format_share(inherited.share)}), fine-tuned {tuned.psnr:.3f} ({format_share(tuned.share)})", flush=True)
    if not rows or rows[0]["lever"] != "base":
        sys.exit("the base run is needed for the deltas")
    base = rows[0]
    print(f"\nval split (whole photos); teacher {ref.teacher.psnr:.3f}, bicubic {ref.baseline.psnr:.3f}; subnet "
          f"{space.encode(config)} (1/{args.fraction} of the teacher's MACs); fine-tune {args.finetune_steps} steps")
    print(f"{'lever':<12}{'change':<26}{'max PSNR':>10}{'d':>7}{'1/10 inh.':>11}{'d':>7}{'1/10 ft':>9}{'d':>7}"
          f"{'share ft':>10}{'d (pt)':>8}{'train s':>9}")
    for r in rows:
        print(f"{r['lever']:<12}{r['change']:<26}{r['max_psnr']:>10.3f}{r['max_psnr'] - base['max_psnr']:>+7.3f}"
              f"{r['psnr']:>11.3f}{r['psnr'] - base['psnr']:>+7.3f}{r['finetuned_psnr']:>9.3f}"
              f"{r['finetuned_psnr'] - base['finetuned_psnr']:>+7.3f}{100 * r['finetuned_share']:>9.1f}%"
              f"{100 * (r['finetuned_share'] - base['finetuned_share']):>+8.1f}{r['train_seconds']:>9.0f}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"config": space.encode(config), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
