"""Five methods side by side on sr4x: ofa (GAN Compression), dmask (DMAD), prune (CAT), agd (AutoGAN-Distiller)
and kd (distillation into a scaled student), at about 1/4, 1/10 and 1/20 of the shipped teacher's MACs.

    python bench/methods.py --json bench/results/methods.json          # the full run (hours; --resume continues it)
    python bench/methods.py --quick --out runs/bench_methods_quick      # every method at 1/10, tiny steps (minutes)
    python bench/methods.py --report bench/results/methods.json        # the table and the plot of a kept JSON

Every cell (method, budget, seed) runs ``python -m nas.search`` (the command users run) into
OUT/cells/NAME/, then judges the student it exported (best/) on the whole test photos against the
shipped teacher. Every student gets the same training after its architecture is chosen (``--steps``:
ofa's fine-tune of its best subnet, kd's and prune's training, dmask's and agd's retraining); what a
method spends before that is its search cost. Each student's architecture is also trained from scratch
for the same steps by the teacher trainer (L1 to ground truth). A cell's result is kept in
OUT/cells/NAME.json as soon as it is measured, so an interrupted run continues with --resume.
Latency: one thread, 256x256, median of 25, every student interleaved with the teacher in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from evaluators.latency import latencies
from evaluators.quality import MIN_TEACHER_GAIN_DB, evaluate_on, format_share, reference
from nas.checkpoint import load_generator
from nas.cli import Parser, at_least, run
from nas.data import load_task
from nas.defaults import default_teacher
from nas.files import atomic_write, atomic_write_text, check_output_file, check_output_folder
from spaces.errors import UserError

FRACTIONS = (4, 10, 20)
SEED_FRACTION = 10  # where the extra seeds run


@dataclass(frozen=True)
class Recipe:
    """How one method is run: its space, where the common training steps go, its own search's flags."""

    space: str
    steps_flag: str
    search: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


RECIPES = {
    "ofa": Recipe("resnet", "--finetune-steps"),
    "kd": Recipe("resnet", "--steps"),
    "prune": Recipe("inception", "--steps"),
    "dmask": Recipe("resnet", "--finetune-steps", ("--search-steps", "200"), ("--search-steps", "12", "--mask-lr", "0.05")),
    "agd": Recipe("agd", "--finetune-steps", ("--search-steps", "60"), ("--search-steps", "2")),
}
QUICK = ("--batch-size", "2", "--crop", "32")


def cell_name(method: str, fraction: int, seed: int) -> str:
    return f"{method}-1_{fraction}-seed{seed}"


def search_steps_of(method: str, quick: bool) -> int:
    """The steps of a method's own search phase before its student trains (dmask, agd; 0 for the others)."""
    search = RECIPES[method].quick if quick else RECIPES[method].search
    return int(search[search.index("--search-steps") + 1]) if "--search-steps" in search else 0


def search_command(method: str, budget: int, seed: int, out: Path, *, steps: int, ofa_trials: int,
                   quick: bool) -> list[str]:
    recipe = RECIPES[method]
    search = recipe.quick if quick else recipe.search
    search_steps = search_steps_of(method, quick)
    every = math.gcd(steps, search_steps) if search_steps else steps  # a report where the search ends
    trials = ofa_trials if method == "ofa" else 1
    flags = [recipe.steps_flag, str(steps), *search]
    if method != "ofa":  # (ofa's fine-tune takes the supernet's batch and crop)
        flags += ["--checkpoint-every", str(every), *(QUICK if quick else ())]
    return [sys.executable, "-m", "nas.search", "--method", method, "--space", recipe.space, "--budget", str(budget),
            "--trials", str(trials), "--seed", str(seed), "--out", str(out), "--no-progress", *flags]


def search_cost(method: str, run: Path) -> float | None:
    """CPU seconds spent choosing the architecture: ofa's evaluated subnets (the supernet's training, shared by
    every budget, is not counted); dmask's and agd's search phase (``search_cpu_s`` of their row); kd and prune
    choose theirs by rule (a scale factor, one-step pruning), which costs next to nothing."""
    table = pd.read_csv(run / "trials.csv", dtype={"trial_id": str, "details_json": str})
    if method == "ofa":
        return float(table["cpu_seconds"].fillna(0).sum())
    if method in ("kd", "prune"):
        return 0.0
    ok = table[table["status"] == "ok"]
    details = json.loads(ok["details_json"].iloc[0]) if len(ok) and isinstance(ok["details_json"].iloc[0], str) else {}
    return details.get("search_cpu_s")


def train_from_scratch(student, steps: int, seed: int, out: Path, quick: bool) -> torch.nn.Module:
    """The student's architecture, trained alone by the teacher trainer (L1 to ground truth) into ``out``
    (continued where a checkpoint is)."""
    from nas.teacher import TeacherObjective
    from nas.training import TrainSettings, Training, run_to_checkpoint

    settings = TrainSettings(steps=steps, batch_size=2 if quick else 16, crop=32 if quick else 64, lr=4e-4, seed=seed,
                             eval_every=steps, checkpoint_every=max(1, min(steps, 500)))
    task = load_task("sr4x")
    config = student.space.encode(student.config)
    objective = TeacherObjective(student.space, student.config, task, settings, torch.device("cpu"),
                                 space_arg=student.space.name, task_spec="sr4x", config_arg=config)
    training = Training(objective, task, settings, torch.device("cpu"), task_spec="sr4x")
    checkpoint = out / "checkpoint.pth"
    if not (checkpoint.is_file() and torch.load(checkpoint, weights_only=True).get("step") == steps):
        with contextlib.redirect_stdout(io.StringIO()):
            run_to_checkpoint(training, out, resume=checkpoint.is_file(), progress=False)
    return load_generator(checkpoint).module.eval()


def run_cell(method: str, fraction: int, seed: int, teacher_macs: int, test_ref, out: Path, *, steps: int,
             ofa_trials: int, quick: bool) -> dict[str, Any]:
    """One method at one budget and seed: search, student judged on test, from-scratch baseline."""
    name = cell_name(method, fraction, seed)
    folder = out / "cells" / name
    budget = int(teacher_macs / fraction)
    command = search_command(method, budget, seed, folder, steps=steps, ofa_trials=ofa_trials, quick=quick)
    info = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    began = time.perf_counter()
    if info.get("status") != "finished":
        argv = command[:3] + ["--resume", "--out", str(folder), "--no-progress"] if info else command
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            return {"cell": name, "method": method, "fraction": fraction, "seed": seed, "budget": budget,
                    "error": (done.stderr.strip().splitlines() or ["(no message)"])[-1],
                    "command": "python -m nas.search " + " ".join(command[3:])}
    wall = time.perf_counter() - began
    student = load_generator(folder / "best" / "model.pth")
    cost = student.space.cost(student.config)
    quality = evaluate_on(student.module, test_ref.eval_set, test_ref)
    scratch = train_from_scratch(student, steps, seed, out / "scratch" / name, quick)
    from_scratch = evaluate_on(scratch, test_ref.eval_set, test_ref)
    return {
        "cell": name, "method": method, "fraction": fraction, "seed": seed, "budget": budget,
        "space": student.space.name, "config": student.space.encode(student.config),
        "macs_torchprofile": cost.torchprofile, "macs_fvcore": cost.fvcore, "params": cost.params,
        "test": quality.as_dict(per_image=True), "scratch": from_scratch.as_dict(per_image=True),
        "steps": steps, "search_cpu_s": search_cost(method, folder),
        "search_wall_s": round(wall, 1) if info.get("status") != "finished" else None,
        "trials": ofa_trials if method == "ofa" else 1,
        "command": "python -m nas.search " + " ".join(command[3:]),
        "student": str(folder / "best" / "model.pth"),
    }


def measure_latency(cells: list[dict[str, Any]], teacher: torch.nn.Module, repeats: int) -> float:
    """Every student's latency in one interleaved run with the teacher (1 thread); returns the teacher's (s)."""
    models = {"teacher": teacher}
    for cell in cells:
        if "error" not in cell:
            models[cell["cell"]] = load_generator(cell["student"]).module
    times = latencies(models, threads=1, repeats=repeats)
    for cell in cells:
        if cell["cell"] in times:
            cell["latency_ms"] = round(1e3 * times[cell["cell"]], 2)
            cell["speedup"] = round(times["teacher"] / times[cell["cell"]], 2)
    return times["teacher"]


# ------------------------------------------------------------------------------------------ report


def _pct(share: float | None) -> str:
    return format_share(share)


def table_markdown(data: dict[str, Any]) -> str:
    """The README's table of a kept JSON: one row per method and budget (seeds as mean and spread)."""
    t, b = data["teacher"], data["bicubic"]["test"]
    lines = [f"Every student trained {data['steps']} steps after its architecture was chosen; ofa searched "
             f"{data['ofa_trials']} subnets of the shipped resnet supernet; prune started from its shipped inception "
             "source network, as CAT does. Shares are of the teacher's gain over bicubic on the test photos.", "",
             "| method | budget | space | config | MACs (torchprofile / fvcore) | params | test PSNR / SSIM | share kept "
             "| fidelity to teacher | from scratch, same steps (share) | latency, 1 thread (speedup) "
             "| search cost, CPU s (wall s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| bicubic | | | | 0 | 0 | {b['psnr']:.2f} / {b['ssim']:.3f} | 0% | | | | |",
             f"| teacher | 1/1 | resnet | `{t['config']}` | {t['macs'] / 1e9:.3f}G | | {t['test']['psnr']:.2f} / "
             f"{t['test']['ssim']:.3f} | 100% | | | {t['latency_ms']:.1f} ms (1.0x) | |"]
    cells = data["cells"]
    for method in RECIPES:
        for fraction in FRACTIONS:
            group = [c for c in cells if c["method"] == method and c["fraction"] == fraction]
            if not group:
                continue
            ok = [c for c in group if "error" not in c]
            if not ok:
                lines.append(f"| {method} | 1/{fraction} | | failed: {group[0]['error']} | | | | | | | | |")
                continue
            c = ok[0]
            shares = [x["test"]["share"] for x in ok if x["test"]["share"] is not None]
            share = _pct(statistics.mean(shares)) if shares else "n/a"
            if len(shares) > 1:
                share += f" ({len(shares)} seeds, {100 * (max(shares) - min(shares)):.0f} pt spread)"
            scratch = statistics.mean(x["scratch"]["psnr"] for x in ok)
            scratch_shares = [x["scratch"]["share"] for x in ok if x["scratch"]["share"] is not None]
            cost = f"{c['search_cpu_s']:.0f}" if c.get("search_cpu_s") is not None else "n/a"
            wall = f" ({c['search_wall_s']:.0f})" if c.get("search_wall_s") else ""
            lines.append(
                f"| {method} | 1/{fraction} | {c['space']} | `{c['config']}` | {c['macs_torchprofile'] / 1e9:.3f}G / "
                f"{c['macs_fvcore'] / 1e9:.3f}G | {c['params']:,} | {statistics.mean(x['test']['psnr'] for x in ok):.2f}"
                f" / {statistics.mean(x['test']['ssim'] for x in ok):.3f} | {share} | "
                f"{statistics.mean(x['test']['fidelity_psnr'] for x in ok):.2f} dB | {scratch:.2f} "
                f"({_pct(statistics.mean(scratch_shares)) if scratch_shares else 'n/a'}) | "
                f"{c.get('latency_ms', float('nan')):.1f} ms ({c.get('speedup', float('nan')):.1f}x) | {cost}{wall} |")
    names = list(t["test"]["per_image"])
    lines += ["", "Test PSNR per photo (dB):", "",
              "| | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1),
              "| bicubic | " + " | ".join(f"{b['per_image'][n]['psnr']:.2f}" for n in names) + f" | {b['psnr']:.2f} |",
              "| teacher | " + " | ".join(f"{t['test']['per_image'][n]['psnr']:.2f}" for n in names)
              + f" | {t['test']['psnr']:.2f} |"]
    for c in cells:
        if "error" not in c:
            lines.append(f"| {c['method']} 1/{c['fraction']} seed {c['seed']} | "
                         + " | ".join(f"{c['test']['per_image'][n]['psnr']:.2f}" for n in names)
                         + f" | {c['test']['psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def pareto_plot(data: dict[str, Any], html: Path, png: Path | None) -> None:
    """Every method's students: share of the teacher's gain kept against MACs (log axis), as HTML and, through
    Debian's headless Chromium (kaleido would download a browser), as PNG."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for method in RECIPES:
        ok = [c for c in data["cells"] if c["method"] == method and "error" not in c and c["test"]["share"] is not None]
        if ok:
            fig.add_trace(go.Scatter(x=[c["macs_torchprofile"] / 1e9 for c in ok],
                                     y=[100 * c["test"]["share"] for c in ok], mode="markers", name=method,
                                     marker={"size": 11}, text=[c["config"] for c in ok],
                                     hovertemplate=method + " %{text}<br>%{x:.3f}G<br>%{y:.0f}%<extra></extra>"))
    fig.add_hline(y=100, line_dash="dot", annotation_text="teacher")
    fig.add_hline(y=0, line_dash="dot", annotation_text="bicubic")
    fig.update_layout(template="plotly_white", xaxis_title="MACs per 256x256 image (G, torchprofile)",
                      yaxis_title="share of the teacher's gain over bicubic kept (%, test)", xaxis_type="log",
                      title="sr4x: five methods, one teacher, one yardstick", width=1000, height=600)
    atomic_write(html, lambda tmp: fig.write_html(tmp, include_plotlyjs=True, config={"displayModeBar": False}))
    if png is not None:
        done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--screenshot={png}", "--window-size=1040,640", "--virtual-time-budget=5000",
                               html.resolve().as_uri()], capture_output=True, text=True)
        if done.returncode or not png.is_file():
            print(f"warning: no PNG of the plot (chromium: {done.stderr.strip()[-200:]})", file=sys.stderr)


def report(data: dict[str, Any], plot_base: Path | None) -> None:
    print(table_markdown(data))
    if plot_base is not None:
        pareto_plot(data, plot_base.with_suffix(".html"), plot_base.with_suffix(".png"))
        print(f"plot: {plot_base.with_suffix('.html')}, {plot_base.with_suffix('.png')}")


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_methods", help="where the cells' runs and students go")
    p.add_argument("--json", help="write the results here (with the table and the plot beside it)")
    p.add_argument("--steps", type=at_least(1), help="training steps of every student after its architecture is "
                   "chosen (default 300; --quick 4)")
    p.add_argument("--ofa-trials", type=at_least(1), help="ofa's search trials (default 40; --quick 4)")
    p.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1], help=f"seeds at 1/{SEED_FRACTION} "
                   "(the first seed only at the other budgets)")
    p.add_argument("--methods", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--quick", action="store_true", help="every method at 1/10, one seed, tiny steps")
    p.add_argument("--resume", action="store_true", help="keep the cells already measured in --out")
    p.add_argument("--latency-repeats", type=at_least(1), default=25)
    p.add_argument("--report", metavar="JSON", help="only print the table and draw the plot of a kept JSON")
    args = p.parse_args(argv)
    if args.report:
        try:
            data = json.loads(Path(args.report).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--report {args.report}: not a JSON this benchmark wrote ({exc})") from None
        report(data, Path(args.report).with_suffix(""))
        return
    if args.json:
        check_output_file(args.json, "--json")
    out = check_output_folder(args.out, "--out")
    if (out / "cells").is_dir() and any((out / "cells").glob("*.json")) and not args.resume:
        raise UserError(f"--out {out} holds cells of an earlier run: pass --resume to continue it, or another --out")
    steps = args.steps or (4 if args.quick else 300)
    ofa_trials = args.ofa_trials or (4 if args.quick else 40)
    repeats = 3 if args.quick else args.latency_repeats
    task = load_task("sr4x")
    teacher = load_generator(default_teacher("sr4x", None))
    teacher_macs = teacher.space.cost(teacher.config).torchprofile
    test_ref = reference(teacher.module, task.eval_set("test"))
    if test_ref.teacher_gain < MIN_TEACHER_GAIN_DB:
        raise UserError(f"the teacher is only {test_ref.teacher_gain:.2f} dB above bicubic on the test split: the "
                        "share of its gain cannot rank students")
    plan = [(m, f, s) for m in args.methods for f in ((SEED_FRACTION,) if args.quick else FRACTIONS)
            for s in (args.seeds[:1] if args.quick or f != SEED_FRACTION else args.seeds)]
    cells = []
    for i, (method, fraction, seed) in enumerate(plan, 1):
        kept = out / "cells" / f"{cell_name(method, fraction, seed)}.json"
        if kept.is_file() and "error" not in (done := json.loads(kept.read_text())):
            cells.append(done)  # measured before: kept (a failed cell is tried again)
            continue
        print(f"[{i}/{len(plan)}] {method} at 1/{fraction} of the teacher's MACs, seed {seed}", flush=True)
        began = time.perf_counter()
        cell = run_cell(method, fraction, seed, teacher_macs, test_ref, out, steps=steps, ofa_trials=ofa_trials,
                        quick=args.quick)
        cell["cell_seconds"] = round(time.perf_counter() - began, 1)
        atomic_write_text(kept, json.dumps(cell, indent=2, default=str) + "\n")
        cells.append(cell)
        print(f"    failed: {cell['error']}" if "error" in cell else
              f"    test PSNR {cell['test']['psnr']:.2f} ({format_share(cell['test']['share'])} of the teacher's gain)",
              flush=True)
    teacher_s = measure_latency(cells, teacher.module, repeats)
    data = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": "python bench/methods.py "
        + " ".join(argv if argv is not None else sys.argv[1:]), "steps": steps, "ofa_trials": ofa_trials,
        "quick": args.quick,
        "teacher": {"config": teacher.space.encode(teacher.config), "macs": teacher_macs,
                    "test": test_ref.teacher.as_dict(per_image=True), "latency_ms": round(1e3 * teacher_s, 2)},
        "bicubic": {"test": test_ref.baseline.as_dict(per_image=True)},
        "cells": cells,
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(data, indent=2, default=str) + "\n")
    report(data, Path(args.json).with_suffix("") if args.json else out / "methods")


def machine() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


if __name__ == "__main__":
    run(main)
