"""Once-for-all compression on sr4x: OFA subnets vs the teacher, bicubic and the same subnets from scratch.

    python bench/ofa_sr4x.py [--weights weights/sr4x] [--scratch-steps N] [--families resnet inception] [--threads 1 2]

For each family's shipped supernet it picks subnets at about 1/4, 1/10 and 1/20 of the teacher's
MACs (the best of a few candidates on the val split, inherited weights, no retraining), reports
PSNR / SSIM / fidelity on the test split, trains the same architectures from scratch with ``nas.train teacher``
(no teacher, L1 to ground truth) for the same number of steps, and measures CPU latency against the teacher
in the same run (interleaved, median of 25, on 1 and 2 threads). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators.quality import evaluate, generate  # noqa: E402
from nas.checkpoint import load_generator  # noqa: E402
from nas.data import load_task  # noqa: E402
from nas.files import atomic_write_text  # noqa: E402
from nas import train  # noqa: E402

FRACTIONS = (4, 10, 20)


def quality(model, task, split, teacher_outputs=None):
    images = task.eval_images(split)
    return evaluate(generate(model, [x for _, x, _ in images]), [y for _, _, y in images], teacher_outputs)


def pick_subnet(supernet, task, target_macs: float, candidates: int, seed: int):
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
    scored = [(quality(supernet.extract(space.decode(c)), task, "val").psnr, c) for c in ranked]
    best = max(scored)[1]
    return space.decode(best), pool[best]


def train_from_scratch(space_file: str, config: str, steps: int, seed: int, out: Path) -> tuple[torch.nn.Module, str]:
    """The subnet trained alone by the project's own teacher trainer (L1 to ground truth, no teacher)
    into ``out`` (replaced); returns the model and the command that trains it."""
    shutil.rmtree(out, ignore_errors=True)
    argv = ["teacher", "--space", space_file, "--config", config, "--task", "sr4x", "--out", str(out),
            "--steps", str(steps), "--batch-size", "16", "--crop", "64", "--lr", "0.0004", "--seed", str(seed),
            "--eval-every", str(steps), "--checkpoint-every", str(steps), "--device", "cpu"]
    with contextlib.redirect_stdout(io.StringIO()):
        train.main([*argv, "--no-progress"])
    return load_generator(out / "checkpoint.pth").module.eval(), "python -m nas.train " + " ".join(argv)


@torch.no_grad()
def latencies(models: dict[str, torch.nn.Module], threads: int, size: int = 256, repeats: int = 25) -> dict[str, float]:
    """Median seconds per 1x3xSxS forward on ``threads`` threads, models interleaved so that machine
    noise hits all alike."""
    torch.set_num_threads(threads)
    x = torch.rand(1, 3, size, size) * 2 - 1
    times = {name: [] for name in models}
    for model in models.values():
        model.eval()(x)  # warm-up
    for _ in range(repeats):
        for name, model in models.items():
            began = time.perf_counter()
            model(x)
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights/sr4x")
    p.add_argument("--families", nargs="+", default=["resnet", "inception"])
    p.add_argument("--scratch-steps", type=int, help="default: the supernet's training steps")
    p.add_argument("--candidates", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads of the latency runs")
    p.add_argument("--scratch-out", default="runs/bench_ofa_scratch", help="where the from-scratch models are trained")
    args = p.parse_args()
    weights = Path(args.weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    task = load_task("sr4x")
    teacher = load_generator(weights / manifest["teacher"]["file"])
    t_macs = teacher.space.macs(teacher.config)
    t_test = quality(teacher.module, task, "test")
    bicubic = evaluate([x for _, x, _ in task.eval_images("test")], [y for _, _, y in task.eval_images("test")]).psnr
    test_inputs = [x for _, x, _ in task.eval_images("test")]
    teacher_outputs = generate(teacher.module, test_inputs)
    print(f"teacher: {teacher.space.encode(teacher.config)}  {t_macs / 1e9:.3f}G MACs (torchprofile, 256x256)  "
          f"{teacher.space.params(teacher.config):,} params  test PSNR {t_test.psnr:.2f}  SSIM {t_test.ssim:.4f}")
    print(f"bicubic: test PSNR {bicubic:.2f}   (test split: {', '.join(task.test.names)}, centre 256x256 crops)\n")
    rows = []
    students = {"teacher": teacher.module}
    for family in args.families:
        entry = manifest[f"supernet_{family}"]
        supernet, record = train.load_supernet(weights / entry["file"])
        steps = args.scratch_steps or record["step"]
        for fraction in FRACTIONS:
            config, macs = pick_subnet(supernet, task, t_macs / fraction, args.candidates, args.seed)
            student = supernet.extract(config).eval()
            ofa = quality(student, task, "test", teacher_outputs)
            began = time.perf_counter()
            model, command = train_from_scratch(record["args"]["space"], supernet.space.encode(config), steps,
                                                args.seed, Path(args.scratch_out) / f"{family}-{fraction}")
            scratch = quality(model, task, "test")
            name = f"{family} 1/{fraction}"
            students[name] = student
            print(f"  {name}: {macs / 1e9:.3f}G  OFA test PSNR {ofa.psnr:.2f}  from scratch {scratch.psnr:.2f} "
                  f"({steps} steps, {time.perf_counter() - began:.0f} s)", flush=True)
            rows.append({"subnet": name, "config": supernet.space.encode(config), "macs": macs,
                         "macs_ratio": t_macs / macs, "psnr": ofa.psnr, "ssim": ofa.ssim,
                         "fidelity_psnr": ofa.fidelity_psnr, "scratch_psnr": scratch.psnr,
                         "scratch_steps": steps, "scratch_seconds": time.perf_counter() - began,
                         "scratch_command": command})
    lat = {n: latencies(students, n) for n in args.threads}
    header = (f"{'subnet':<16}{'MACs':>8}{'x fewer':>9}{'PSNR':>8}{'SSIM':>8}{'fidelity':>10}{'scratch':>9}"
              f"{'d teacher':>11}{'d scratch':>11}" + "".join(f"{f'speedup@{n}':>11}{'/MACs':>7}" for n in args.threads))
    print(header)
    print("-" * len(header))
    for row in rows:
        row["latency_s"] = {n: lat[n][row["subnet"]] for n in args.threads}
        row["speedup"] = {n: lat[n]["teacher"] / lat[n][row["subnet"]] for n in args.threads}
        print(f"{row['subnet']:<16}{row['macs'] / 1e9:>7.3f}G{row['macs_ratio']:>9.1f}{row['psnr']:>8.2f}"
              f"{row['ssim']:>8.4f}{row['fidelity_psnr']:>10.2f}{row['scratch_psnr']:>9.2f}"
              f"{row['psnr'] - t_test.psnr:>+11.2f}{row['psnr'] - row['scratch_psnr']:>+11.2f}"
              + "".join(f"{row['speedup'][n]:>10.1f}x{row['speedup'][n] / row['macs_ratio']:>7.2f}"
                        for n in args.threads))
    teacher_ms = ", ".join(f"{lat[n]['teacher'] * 1e3:.1f} ms on {n} thread{'s' if n > 1 else ''}" for n in args.threads)
    print(f"\nteacher latency per 256x256 image on this CPU: {teacher_ms}; "
          "scratch = same subnet, same steps, L1 to ground truth, no teacher")
    if args.json:
        atomic_write_text(args.json, json.dumps({"teacher_psnr": t_test.psnr, "bicubic_psnr": bicubic, "rows": rows},
                                                indent=2))


if __name__ == "__main__":
    main()
