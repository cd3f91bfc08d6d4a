"""Once-for-all compression on sr4x, judged on whole test photos: inherited, fine-tuned and from scratch.

    python bench/ofa_sr4x.py [--weights weights/sr4x] [--families resnet inception] [--threads 1]
                             [--finetune-steps N] [--json runs/bench_ofa.json]

For each family's shipped supernet it picks subnets at about 1/4, 1/10 and 1/20 of the teacher's
MACs (the best val PSNR among the largest sampled configs under each target, inherited weights),
then reports on the test split (whole photos, per image and mean): PSNR, SSIM and the share of the
teacher's gain over bicubic kept, for
- the subnet with inherited weights,
- the subnet fine-tuned by distillation as ``nas.search`` exports its best (``--finetune-steps``),
- the same architecture trained from scratch by ``nas.train teacher`` (L1 to ground truth, no
  teacher) for the supernet's steps plus the fine-tuning steps. Every supernet step trains weights
  that this subnet shares (the sandwich rule's largest subnet holds all of them, the smallest a
  part of them), so the whole supernet run is counted as this subnet's share: the most generous
  count for the scratch baseline.
It also measures CPU latency against the teacher in the same run (interleaved, median of 25), and
the teacher and the 1/10 students on inputs downscaled with Pillow's bicubic instead of the
project's antialiased torch bicubic (as many users' photos are). Prints tables; asserts nothing.
Stops when the teacher is less than 0.5 dB above bicubic on the test mean: no share can rank students.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluators.latency import latencies
from evaluators.quality import MIN_TEACHER_GAIN_DB, EvalSet, Quality, Reference, evaluate_on, format_share, reference
from nas import train
from nas.checkpoint import load_generator, load_supernet
from nas.data import SR_SCALE, Task, load_task, photo, to_tensor, upscale
from nas.export import finetune_subnet
from nas.files import atomic_write_text, check_output_file, check_output_folder
from nas.methods.ofa import FINETUNE_STEPS
from nas.cli import Parser, at_least, run
from spaces.errors import UserError

FRACTIONS = (4, 10, 20)


def pick_subnet(supernet, target_macs: float, ref: Reference, candidates: int = 6, seed: int = 0):
    """Best val PSNR among the largest sampled configs under ``target_macs`` (inherited weights)."""
    space = supernet.space
    rng = random.Random(seed)
    pool = {}
    for _ in range(4000):
        config = space.sample(rng)
        macs = space.macs(config)
        if 0.7 * target_macs <= macs <= target_macs:
            pool[space.encode(config)] = macs
    if not pool:
        config = space.min_config()
        return config, space.macs(config)
    ranked = sorted(pool, key=pool.get, reverse=True)[:candidates]
    scored = [(evaluate_on(supernet.extract(space.decode(c)), ref.eval_set, ref).psnr, c) for c in ranked]
    best = max(scored)[1]
    return space.decode(best), pool[best]


def train_from_scratch(space_file: str, config: str, steps: int, seed: int, out: Path) -> tuple[torch.nn.Module, str]:
    """The subnet trained alone by the project's own teacher trainer (L1 to ground truth, no teacher)
    into ``out``; returns the model and the command that trains it. A finished run of the same
    command there is reused (anything else there is replaced)."""
    argv = ["teacher", "--space", space_file, "--config", config, "--task", "sr4x", "--out", str(out),
            "--steps", str(steps), "--batch-size", "16", "--crop", "64", "--lr", "0.0004", "--seed", str(seed),
            "--eval-every", str(steps), "--checkpoint-every", str(steps), "--device", "cpu"]
    command = "python -m nas.train " + " ".join(argv)
    done = out / "command.txt"
    if not (done.is_file() and done.read_text() == command and (out / "checkpoint.pth").is_file()):
        shutil.rmtree(out, ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()):
            train.main([*argv, "--no-progress"])
        atomic_write_text(done, command)
    return load_generator(out / "checkpoint.pth").module.eval(), command


def pillow_test_set(task: Task) -> EvalSet:
    """The test photos downscaled 4x with Pillow's bicubic, then upscaled as ``nas.apply`` does."""
    inputs, targets = [], []
    for name, target in zip(task.test.names, task.test.targets):
        _, h, w = target.shape
        hr = Image.fromarray(photo(name)[:h, :w])
        low = np.asarray(hr.resize((w // SR_SCALE, h // SR_SCALE), Image.Resampling.BICUBIC))
        inputs.append(upscale(to_tensor(low), SR_SCALE))
        targets.append(target)
    return EvalSet("test (Pillow bicubic)", tuple(task.test.names), tuple(inputs), tuple(targets), baseline="bicubic")


def print_per_image(title: str, ref: Reference, students: dict[str, Quality]) -> None:
    names = ref.eval_set.names
    print(f"\n{title}: PSNR per image (share of the teacher's gain in brackets where the teacher gains >= "
          f"{MIN_TEACHER_GAIN_DB} dB on that image)")
    print(f"{'':<22}" + "".join(f"{n:>22}" for n in names) + f"{'mean':>22}")
    print(f"{'bicubic':<22}" + "".join(f"{ref.baseline.per_image[n]['psnr']:>22.2f}" for n in names)
          + f"{ref.baseline.psnr:>22.2f}")
    print(f"{'teacher':<22}" + "".join(f"{ref.teacher.per_image[n]['psnr']:>22.2f}" for n in names)
          + f"{ref.teacher.psnr:>22.2f}")
    for label, q in students.items():
        cells = [f"{q.per_image[n]['psnr']:.2f} ({format_share(q.per_image[n]['share'])})" for n in names]
        print(f"{label:<22}" + "".join(f"{c:>22}" for c in cells) + f"{f'{q.psnr:.2f} ({format_share(q.share)})':>22}")


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights/sr4x")
    p.add_argument("--families", nargs="+", default=["resnet", "inception"])
    p.add_argument("--finetune-steps", type=at_least(0), default=FINETUNE_STEPS, help="as nas.search's default")
    p.add_argument("--scratch-steps", type=at_least(1), help="default: the supernet's steps plus --finetune-steps")
    p.add_argument("--candidates", type=at_least(1), default=6)
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--threads", type=at_least(1), nargs="+", default=[1], help="CPU threads of the latency runs")
    p.add_argument("--scratch-out", default="runs/bench_ofa_scratch", help="where the from-scratch models are trained")
    args = p.parse_args(argv)
    if args.json:
        check_output_file(args.json, "--json")
    check_output_folder(args.scratch_out, "--scratch-out")
    weights = Path(args.weights)
    if not (weights / "manifest.json").is_file():
        raise UserError(f"--weights {weights} holds no manifest.json (the shipped weights are in weights/sr4x)")
    manifest = json.loads((weights / "manifest.json").read_text())
    unknown = [f for f in args.families if f"supernet_{f}" not in manifest]
    if unknown:
        shipped = sorted(k.removeprefix("supernet_") for k in manifest if k.startswith("supernet_"))
        raise UserError(f"--families: no supernet for {', '.join(unknown)} in {weights} (there: {', '.join(shipped)})")
    task = load_task("sr4x")
    teacher = load_generator(weights / manifest["teacher"]["file"])
    t_macs = teacher.space.macs(teacher.config)
    val_ref, test_ref = reference(teacher.module, task.eval_set("val")), reference(teacher.module, task.eval_set("test"))
    print(f"teacher: {teacher.space.encode(teacher.config)}  {t_macs / 1e9:.3f}G MACs (torchprofile, 256x256)  "
          f"{teacher.space.params(teacher.config):,} params")
    print(f"test split, whole photos: {', '.join(task.test.names)}; teacher PSNR {test_ref.teacher.psnr:.2f}, "
          f"bicubic {test_ref.baseline.psnr:.2f} (gain {test_ref.teacher_gain:+.2f} dB)", flush=True)
    if test_ref.teacher_gain < MIN_TEACHER_GAIN_DB:
        sys.exit(f"the teacher is only {test_ref.teacher_gain:.2f} dB above bicubic on the test split (under "
                 f"{MIN_TEACHER_GAIN_DB} dB): the share of its gain cannot rank students; stopping")
    pil_ref = reference(teacher.module, pillow_test_set(task))
    rows, students, qualities, pil_students = [], {"teacher": teacher.module}, {}, {}
    for family in args.families:
        supernet, record = load_supernet(weights / manifest[f"supernet_{family}"]["file"])
        scratch_steps = args.scratch_steps or record["step"] + args.finetune_steps
        for fraction in FRACTIONS:
            name = f"{family} 1/{fraction}"
            config, macs = pick_subnet(supernet, t_macs / fraction, val_ref, args.candidates, args.seed)
            inherited = supernet.extract(config).eval()
            began = time.perf_counter()
            tuned = finetune_subnet(supernet.extract(config), record, teacher.module, task, steps=args.finetune_steps,
                                    seed=args.seed, progress=False).eval()
            tune_seconds = time.perf_counter() - began
            began = time.perf_counter()
            scratch, command = train_from_scratch(record["args"]["space"], supernet.space.encode(config), scratch_steps,
                                                  args.seed, Path(args.scratch_out) / f"{family}-{fraction}")
            scratch_seconds = time.perf_counter() - began
            q = {kind: evaluate_on(model, test_ref.eval_set, test_ref)
                 for kind, model in (("inherited", inherited), ("finetuned", tuned), ("scratch", scratch))}
            students[name] = tuned
            qualities.update({f"{name} {kind}": quality for kind, quality in q.items()})
            if fraction == 10:
                pil_students[f"{name} fine-tuned"] = evaluate_on(tuned, pil_ref.eval_set, pil_ref)
            print(f"  {name}: {macs / 1e9:.3f}G  test PSNR inherited {q['inherited'].psnr:.2f} "
                  f"({format_share(q['inherited'].share)}), fine-tuned {q['finetuned'].psnr:.2f} "
                  f"({format_share(q['finetuned'].share)}, {tune_seconds:.0f} s), from scratch "
                  f"{q['scratch'].psnr:.2f} ({format_share(q['scratch'].share)}, {scratch_steps} steps, "
                  f"{scratch_seconds:.0f} s)", flush=True)
            rows.append({"subnet": name, "config": supernet.space.encode(config), "macs": macs,
                         "macs_ratio": t_macs / macs, **{kind: quality.as_dict(per_image=True) for kind, quality in q.items()},
                         "finetune_steps": args.finetune_steps, "finetune_seconds": tune_seconds,
                         "supernet_steps": record["step"], "scratch_steps": scratch_steps,
                         "scratch_seconds": scratch_seconds, "scratch_command": command})
    lat = {n: latencies(students, threads=n) for n in args.threads}
    header = (f"{'subnet':<16}{'MACs':>8}{'x fewer':>9}{'inherited':>16}{'fine-tuned':>16}{'scratch':>16}"
              f"{'ft - scratch':>14}" + "".join(f"{f'speedup@{n}':>11}{'/MACs':>7}" for n in args.threads))
    print(f"\ntest split (whole photos): mean PSNR (share of the teacher's gain over bicubic)\n{header}\n"
          + "-" * len(header))
    for row in rows:
        row["latency_s"] = {n: lat[n][row["subnet"]] for n in args.threads}
        row["speedup"] = {n: lat[n]["teacher"] / lat[n][row["subnet"]] for n in args.threads}
        cells = [f"{row[k]['psnr']:.2f} ({format_share(row[k]['share'])})" for k in ("inherited", "finetuned", "scratch")]
        points = 100 * (row["finetuned"]["share"] - row["scratch"]["share"])
        print(f"{row['subnet']:<16}{row['macs'] / 1e9:>7.3f}G{row['macs_ratio']:>9.1f}" + "".join(f"{c:>16}" for c in cells)
              + f"{points:>+12.0f}pt" + "".join(f"{row['speedup'][n]:>10.1f}x{row['speedup'][n] / row['macs_ratio']:>7.2f}"
                                                for n in args.threads))
    teacher_ms = ", ".join(f"{lat[n]['teacher'] * 1e3:.1f} ms on {n} thread{'s' if n > 1 else ''}" for n in args.threads)
    print(f"teacher latency per 256x256 image on this CPU: {teacher_ms}")
    print_per_image("test split, fine-tuned students", test_ref,
                    {k.removesuffix(" finetuned"): v for k, v in qualities.items() if k.endswith("finetuned")})
    print_per_image("test split downscaled with Pillow's bicubic", pil_ref, pil_students)
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "teacher": {"config": teacher.space.encode(teacher.config), "macs": t_macs, "test": test_ref.teacher.as_dict(per_image=True),
                        "test_pillow": pil_ref.teacher.as_dict(per_image=True)},
            "bicubic": {"test": test_ref.baseline.as_dict(per_image=True), "test_pillow": pil_ref.baseline.as_dict(per_image=True)},
            "pillow_students": {k: v.as_dict(per_image=True) for k, v in pil_students.items()},
            "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
