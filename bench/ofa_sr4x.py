"""Once-for-all compression on sr4x, judged on whole test photos: inherited, fine-tuned and from scratch.

    python bench/ofa_sr4x.py [--weights weights/sr4x] [--families resnet inception] [--threads 1]
                             [--finetune-steps N] [--json bench/results/ofa_sr4x.json]
    python bench/ofa_sr4x.py --report bench/results/ofa_sr4x.json      # the tables of a kept JSON

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
project's antialiased torch bicubic (as many users' photos are). Prints the README's tables (markdown);
asserts nothing.
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
from typing import Any

import numpy as np
import torch
from PIL import Image

from evaluators.latency import latencies
from evaluators.quality import MIN_TEACHER_GAIN_DB, EvalSet, Reference, evaluate_on, format_share, reference
from nas import train
from nas.checkpoint import load_generator, load_supernet, safe_load
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
    into ``out``; returns the model and the command that trains it. A run of the same command there
    is reused, and continued from its checkpoint when it was stopped (anything else there is replaced)."""
    argv = ["teacher", "--space", space_file, "--config", config, "--task", "sr4x", "--out", str(out),
            "--steps", str(steps), "--batch-size", "16", "--crop", "64", "--lr", "0.0004", "--seed", str(seed),
            "--eval-every", str(steps), "--checkpoint-every", str(min(steps, 500)), "--device", "cpu"]
    command = "python -m nas.train " + " ".join(argv)
    recorded, checkpoint = out.with_name(out.name + ".command.txt"), out / "checkpoint.pth"
    if not (recorded.is_file() and recorded.read_text() == command):
        shutil.rmtree(out, ignore_errors=True)
        atomic_write_text(recorded, command)
    if not (checkpoint.is_file() and safe_load(checkpoint)["step"] >= steps):
        with contextlib.redirect_stdout(io.StringIO()):
            train.main([*argv, "--no-progress", *(["--resume"] if checkpoint.is_file() else [])])
    return load_generator(checkpoint).module.eval(), command


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


def _cell(quality: dict[str, Any]) -> str:
    return f"{quality['psnr']:.2f} ({format_share(quality['share'])})"


def _per_photo_table(title: str, teacher: dict[str, Any], bicubic: dict[str, Any],
                     students: dict[str, dict[str, Any]]) -> list[str]:
    names = list(teacher["per_image"])
    row = lambda label, cells, mean: f"| {label} | " + " | ".join(cells) + f" | {mean} |"  # noqa: E731
    return [title, "", "| | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1),
            row("bicubic", [f"{bicubic['per_image'][n]['psnr']:.2f}" for n in names], f"{bicubic['psnr']:.2f}"),
            row("teacher", [f"{teacher['per_image'][n]['psnr']:.2f}" for n in names], f"{teacher['psnr']:.2f}"),
            *(row(label, [_cell(q["per_image"][n]) for n in names], _cell(q)) for label, q in students.items())]


def tables_markdown(data: dict[str, Any]) -> str:
    """The README's tables of a kept JSON (as ``json.load`` gives it back): the subnets, then per test photo
    the fine-tuned students, and the same on Pillow's bicubic inputs."""
    rows = data["rows"]
    threads = list(rows[0]["speedup"]) if rows else []
    head = ["subnet", "config", "MACs", "x fewer", "inherited PSNR (share)", "fine-tuned PSNR / SSIM (share)",
            "from scratch PSNR (share)", "fine-tuned - scratch",
            *(f"speedup, {n} thread{'s' if n != '1' else ''} (/ MACs ratio)" for n in threads)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ft = r["finetuned"]
        points = ("n/a" if ft["share"] is None or r["scratch"]["share"] is None
                  else f"{100 * (ft['share'] - r['scratch']['share']):+.0f} points")
        lines.append(f"| {r['subnet']} | `{r['config']}` | {r['macs'] / 1e9:.3f}G | {r['macs_ratio']:.1f} | "
                     f"{_cell(r['inherited'])} | {ft['psnr']:.2f} / {ft['ssim']:.3f} ({format_share(ft['share'])}) | "
                     f"{_cell(r['scratch'])} | {points} | "
                     + " | ".join(f"{r['speedup'][n]:.1f}x ({r['speedup'][n] / r['macs_ratio']:.2f})" for n in threads)
                     + " |")
    if rows:
        teacher_ms = ", ".join(f"{rows[0]['latency_s'][n] * rows[0]['speedup'][n] * 1e3:.1f} ms on {n} "
                               f"thread{'s' if n != '1' else ''}" for n in threads)
        lines += ["", f"Teacher latency per 256x256 image: {teacher_ms}."]
    bicubic, teacher = data["bicubic"], data["teacher"]
    lines += ["", *_per_photo_table(
        f"Test PSNR per photo, fine-tuned students (share in brackets where the teacher gains at least "
        f"{MIN_TEACHER_GAIN_DB} dB on that photo):", teacher["test"], bicubic["test"],
        {f"{r['subnet']} fine-tuned": r["finetuned"] for r in rows})]
    lines += ["", *_per_photo_table("The same photos downscaled with Pillow's bicubic:", teacher["test_pillow"],
                                    bicubic["test_pillow"], data["pillow_students"])]
    return "\n".join(lines) + "\n"


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
    p.add_argument("--report", metavar="JSON", help="only print the tables of a kept JSON")
    args = p.parse_args(argv)
    if args.report:
        print(tables_markdown(read_kept(args.report)))
        return
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
    for row in rows:
        row["latency_s"] = {n: lat[n][row["subnet"]] for n in args.threads}
        row["speedup"] = {n: lat[n]["teacher"] / lat[n][row["subnet"]] for n in args.threads}
    data = {"command": "python bench/ofa_sr4x.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d"), "finetune_steps": args.finetune_steps,
            "teacher": {"config": teacher.space.encode(teacher.config), "macs": t_macs,
                        "test": test_ref.teacher.as_dict(per_image=True),
                        "test_pillow": pil_ref.teacher.as_dict(per_image=True)},
            "bicubic": {"test": test_ref.baseline.as_dict(per_image=True),
                        "test_pillow": pil_ref.baseline.as_dict(per_image=True)},
            "pillow_students": {k: v.as_dict(per_image=True) for k, v in pil_students.items()},
            "rows": rows}
    text = json.dumps(data, indent=2) + "\n"
    if args.json:
        atomic_write_text(args.json, text)
    print("\n" + tables_markdown(json.loads(text)))  # through JSON, as --report reads it: one format


def read_kept(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not {"rows", "teacher", "bicubic"} <= set(data):
            raise ValueError("rows, teacher or bicubic missing")
    except (OSError, ValueError) as exc:
        raise UserError(f"--report {path}: not a JSON this benchmark wrote ({exc})") from None
    return data


if __name__ == "__main__":
    run(main)
