"""How many fine-tuning steps the exported best student needs: val quality against steps.

    python bench/ofa_finetune.py [--family resnet] [--fraction 10] [--steps 0 250 500 1000 2000]

Takes the subnet of the shipped supernet at about 1/FRACTION of the teacher's MACs (the pick of
``bench/ofa_sr4x.py``), fine-tunes it with the supernet's distillation loss (what ``nas.search``
does to its best student) for each number of steps, from the inherited weights each time, and
prints val PSNR, the share of the teacher's gain over bicubic and the seconds it took. Val only:
this chooses a default, so the test split is not looked at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from evaluators.quality import MIN_TEACHER_GAIN_DB, evaluate_on, format_share, reference
from nas.checkpoint import load_generator
from nas.data import load_task
from nas.files import atomic_write_text, check_output_file
from nas.export import FINETUNE_LR, finetune_subnet
from nas.checkpoint import load_supernet
from nas.cli import Parser, at_least, run
from ofa_sr4x import pick_subnet


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights/sr4x")
    p.add_argument("--family", default="resnet")
    p.add_argument("--fraction", type=at_least(1), default=10)
    p.add_argument("--steps", type=at_least(0), nargs="+", default=[0, 250, 500, 1000, 2000])
    p.add_argument("--lr", type=at_least(1e-12, float), default=FINETUNE_LR, help=f"fine-tuning learning rate (default {FINETUNE_LR:g})")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if args.json:
        check_output_file(args.json, "--json")
    weights = Path(args.weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    task = load_task("sr4x")
    val = task.eval_set("val")
    teacher = load_generator(weights / manifest["teacher"]["file"])
    ref = reference(teacher.module, val)
    if ref.teacher_gain is None or ref.teacher_gain < MIN_TEACHER_GAIN_DB:
        sys.exit(f"the teacher is not {MIN_TEACHER_GAIN_DB} dB above bicubic on val: no share can rank students")
    supernet, record = load_supernet(weights / manifest[f"supernet_{args.family}"]["file"])
    target = teacher.space.macs(teacher.config) / args.fraction
    config, macs = pick_subnet(supernet, target, ref)
    print(f"{args.family} 1/{args.fraction}: {supernet.space.encode(config)}  {macs / 1e9:.3f}G MACs; teacher val PSNR "
          f"{ref.teacher.psnr:.3f}, bicubic {ref.baseline.psnr:.3f}")
    print(f"fine-tuning learning rate {args.lr:g}, cosine decay")
    print(f"{'steps':>6}{'val PSNR':>10}{'share':>8}{'seconds':>9}")
    rows = []
    for steps in args.steps:
        began = time.perf_counter()
        student = supernet.extract(config)
        if steps:
            student = finetune_subnet(student, record, teacher.module, task, steps=steps, lr=args.lr, progress=False)
        seconds = time.perf_counter() - began
        quality = evaluate_on(student, val, ref)
        rows.append({"steps": steps, "val_psnr": quality.psnr, "share": quality.share, "seconds": seconds})
        print(f"{steps:>6}{quality.psnr:>10.3f}{format_share(quality.share):>8}{seconds:>9.1f}", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps({"family": args.family, "lr": args.lr, "fraction": args.fraction,
                                                 "config": supernet.space.encode(config), "macs": macs,
                                                 "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
