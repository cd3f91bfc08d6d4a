"""``python -m nas.train teacher|supernet|student``: train a teacher, a once-for-all supernet, or one
student with a training method (one trial of ``nas.search``, run alone).

    python -m nas.train student --method kd --budget 0.5G --out runs/kd-student

Every run goes through the one training loop (``nas.training``): its data and sampled subnets are
pure functions of (seed, step), so a run resumed from its checkpoint (``--resume``) continues exactly
as if it had not stopped.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch

from nas.checkpoint import load_generator, read_training_record
from nas.cli import Parser, add_dataclass_arguments, at_least, dataclass_from_args, flag_value, parse_budget, run
from nas.data import load_task
from nas.device import pick_device
from nas.distill import DISTILL_WEIGHT
from nas.files import check_output_folder
from nas.methods.ofa import SANDWICH, SANDWICH_PHASES, SupernetObjective, parse_sandwich
from nas.teacher import TeacherObjective
from nas.training import TrainSettings, Training, run_to_checkpoint
from spaces.errors import UserError
from spaces.space import load_space


def _settings(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr, seed=args.seed,
                         eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                         gan_weight=args.gan_weight, ndf=args.ndf, amp=args.amp)


def _extra(args: argparse.Namespace) -> dict:
    return {"out": str(args.out), "device": args.device, "workers": args.workers or 1}


def build_teacher(args: argparse.Namespace, device: torch.device) -> Training:
    settings, task = _settings(args), load_task(args.task)
    space = load_space(args.space)
    objective = TeacherObjective(space, space.decode(args.config), task, settings, device, space_arg=args.space,
                                 task_spec=args.task, config_arg=args.config)
    return Training(objective, task, settings, device, task_spec=args.task, extra=_extra(args))


def build_supernet(args: argparse.Namespace, device: torch.device) -> Training:
    parse_sandwich(args.sandwich)  # before anything is loaded
    if args.discriminator and args.gan_weight == 0:
        raise UserError("--discriminator is used only with a GAN loss; give --gan-weight > 0 or leave it out")
    settings, task = _settings(args), load_task(args.task)
    space = load_space(args.space)
    teacher = load_generator(args.teacher)
    if (teacher.space.spec.in_channels, teacher.space.spec.out_channels) != \
            (space.spec.in_channels, space.spec.out_channels):
        raise UserError(f"teacher {args.teacher} maps {teacher.space.spec.in_channels} to "
                        f"{teacher.space.spec.out_channels} channels but space {space.name} maps "
                        f"{space.spec.in_channels} to {space.spec.out_channels}")
    objective = SupernetObjective(space, teacher.module, task, settings, device, space_arg=args.space,
                                  teacher_path=args.teacher, distill_weight=args.distill_weight,
                                  distill_layers=args.distill_layers, sandwich=args.sandwich,
                                  discriminator=args.discriminator)
    return Training(objective, task, settings, device, task_spec=args.task, extra=_extra(args))


BUILDERS = {"teacher": build_teacher, "supernet": build_supernet}


def train_model(args: argparse.Namespace) -> Path:
    """``nas.train teacher|supernet``: in this process, or data-parallel on Ray Train with ``--workers``."""
    build = BUILDERS[args.what]
    if args.workers is None:
        training = build(args, pick_device(args.device))
        return run_to_checkpoint(training, Path(args.out), resume=args.resume, stop_at=args.stop_at,
                                 progress=not args.no_progress)
    from nas.ray_train import fit, model_loop

    workers = _workers(args, args.batch_size)
    # Built here once on the CPU, so that every argument and a --resume checkpoint are checked before Ray starts.
    training = build(args, torch.device("cpu"))
    out = Path(args.out)
    checkpoint = out / "checkpoint.pth"
    resume = None
    if args.resume:
        if not checkpoint.is_file():
            raise UserError(f"--resume: no checkpoint at {checkpoint}; start without --resume")
        training.restore(read_training_record(checkpoint), source=str(checkpoint))
        resume = ({checkpoint.name: checkpoint.read_bytes()}, str(checkpoint))
    elif checkpoint.exists():
        raise UserError(f"{checkpoint} exists; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    until = min(args.steps, args.stop_at) if args.stop_at else args.steps
    fit(model_loop, {"build": functools.partial(build, args), "until": until}, workers, out, storage=out / "ray",
        resume=resume, label=training.objective.label, total=args.steps, initial=training.step,
        progress=not args.no_progress, name=f"nas-train-{args.what}")
    return checkpoint


def _workers(args: argparse.Namespace, batch_size: int) -> Any:
    """``--workers`` and its options (a ``nas.ray_train.Workers``), checked before Ray starts."""
    from nas.ray_session import check_address
    from nas.ray_train import Workers, check_workers

    workers = Workers(args.workers, args.gpus_per_worker, check_address(args.address), args.storage)
    check_workers(workers, batch_size)
    return workers


def train_student(args: argparse.Namespace, argv: list[str]) -> Path:
    """One trial of a training method, alone: checkpoints in OUT/trial/, the export in OUT/student/; with
    ``--workers``, the trial trains data-parallel on Ray Train."""
    from nas.defaults import DEFAULT_WEIGHTS, default_teacher, shipped_manifest
    from nas.methods import get_method
    from nas.methods.base import SearchContext

    method_class = get_method(args.method, "student")
    options = method_class.Options()
    options = method_class.fill_defaults(dataclass_from_args(method_class.Options, args, options), args.task,
                                         args.space, shipped_manifest(args.task), DEFAULT_WEIGHTS)
    budget = parse_budget(args.budget)
    workers = _workers(args, options.batch_size) if args.workers is not None else None
    out = Path(args.out)
    folder = out / "trial"
    if args.resume and not (folder.is_dir() and any(folder.iterdir())):
        raise UserError(f"--resume: no checkpoint in {folder}; start without --resume")
    if not args.resume and out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; pass --resume to continue it or choose another --out")
    # data-parallel workers train on their own devices: here the trial is only built (and checked) on the CPU
    device = "cpu" if workers else str(pick_device(args.device))
    context = SearchContext(method=args.method, task=args.task, teacher=default_teacher(args.task, args.teacher),
                            space=args.space, budget=budget, seed=args.seed, device=device, options=options)
    method = method_class(context)
    smallest = method.space.macs(method.space.min_config())
    if budget < smallest:
        raise UserError(f"budget {args.budget} is below the smallest config of space '{method.space.name}' "
                        f"({smallest / 1e9:.4g}G MACs); raise --budget")
    for note in method.notes():
        print(f"note: {note}", flush=True)
    method.load()
    params = method.first_params()[0]
    trial = method.start(params)
    if args.resume:
        trial.restore(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text("python -m nas.train " + " ".join(argv) + "\n")
    if workers:
        from nas.ray_train import fit, pack, student_loop

        ends = fit(student_loop, {"method": args.method, "context": context, "params": params, "until": args.stop_at},
                   workers, folder, storage=out / "ray", resume=(pack(folder), str(folder)) if args.resume else None,
                   label=args.method, total=trial.steps_total, initial=trial.steps_done,
                   progress=not args.no_progress, name="nas-train-student")
        if "failed" in ends:
            raise UserError(ends["failed"])
    else:
        ends = _step_trial(trial, folder, args)
    if "candidate" not in ends:
        print(f"stopped at step {ends['stopped']} with a checkpoint in {folder}; continue with --resume")
        return folder / "checkpoint.pth"
    row = ends["candidate"]
    report = method.export(row, folder / row["weights"] if row["weights"] else None, out / "student",
                           device="cpu", progress=not args.no_progress)
    (out / "candidate.json").write_text(json.dumps(row, indent=2) + "\n")
    share = row.get("share")
    print(f"student {row['architecture']}: {row['macs_torchprofile'] / 1e9:.3f}G MACs, val PSNR {row['psnr']:.3f}"
          + (f", share of the teacher's gain {100 * share:.1f}%" if share is not None else "")
          + f"; exported to {out / 'student'} ({', '.join(report['files'].values())})")
    return out / "student" / "model.pth"


def _step_trial(trial: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The trial stepped in this process, saved to ``folder`` after every step, to its end (``candidate``:
    its row) or to ``--stop-at`` (``stopped``: the step)."""
    from tqdm import tqdm

    from nas.methods.base import Candidate, Failed

    bar = tqdm(total=trial.steps_total, initial=trial.steps_done, desc=args.method,
               disable=not trial.steps_total or args.no_progress, dynamic_ncols=True)
    try:
        while True:
            result = trial.step()
            trial.save(folder)
            if isinstance(result, Failed):
                raise UserError(result.message)
            if isinstance(result, Candidate):
                return {"candidate": result.result()}
            bar.update(result["step"] - bar.n)
            bar.set_postfix(loss=f"{result['loss']:.4f}")
            if args.stop_at and result["step"] >= args.stop_at:
                return {"stopped": result["step"]}
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------- CLI


def _add_schedule(p: argparse.ArgumentParser, default_steps: int) -> None:
    p.add_argument("--task", default="sr4x", help="sr4x (embedded) or a data folder (pix2pix, CycleGAN or single)")
    p.add_argument("--out", required=True, help="folder for checkpoint.pth")
    p.add_argument("--steps", type=int, default=default_steps)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=64, help="training crop size (pixels)")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--gan-weight", type=float, default=0.0, help="weight of the PatchGAN loss (0: off)")
    p.add_argument("--ndf", type=int, default=32, help="discriminator width")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA (pays off only with large batches and crops: README, GPU path)")
    _add_workers(p)
    _add_run(p)


def _add_workers(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data-parallel training on Ray Train (README: Training on many GPUs)")
    g.add_argument("--workers", type=int, help="train on N workers (each a slice of every batch); without it, "
                   "one process and no Ray")
    g.add_argument("--gpus-per-worker", type=at_least(0, float), default=0.0, help="GPUs of each worker (0: CPU workers, gloo)")
    g.add_argument("--address", help="Ray cluster address (auto, host:port); default: RAY_ADDRESS or a local instance")
    g.add_argument("--storage", help="where Ray Train keeps the workers' checkpoints: a path every node sees or a "
                   "cloud URI (default OUT/ray, enough on one machine)")


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--stop-at", type=at_least(1), help="stop after this step with a checkpoint (for time-limited jobs); "
                   "continue later with --resume")
    p.add_argument("--no-progress", action="store_true")


def build_parser(method: str | None = None) -> Parser:
    from nas.methods import get_method, list_methods

    parser = Parser(prog="python -m nas.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True, parser_class=Parser)
    t = sub.add_parser("teacher", help="train a teacher generator")
    t.add_argument("--space", default="resnet", help="space name or YAML path")
    t.add_argument("--config", default="max", help="the teacher's config in that space (default max)")
    _add_schedule(t, 4000)
    s = sub.add_parser("supernet", help="train a once-for-all supernet by distillation")
    s.add_argument("--space", default="resnet", help="space name or YAML path")
    s.add_argument("--teacher", required=True, help="teacher checkpoint (nas.train or pix2pix *_net_G*.pth)")
    s.add_argument("--method", default="ofa", choices=["ofa"])
    s.add_argument("--distill-weight", type=at_least(0, float), default=DISTILL_WEIGHT,
                   help="weight of feature distillation (MSE relative to the teacher features' mean square) "
                        "against the L1 reconstruction")
    s.add_argument("--distill-layers", type=at_least(1), default=3,
                   help="teacher trunk blocks to distil from, at most the teacher's (fewer where the student has fewer)")
    s.add_argument("--discriminator", help="PatchGAN state dict to start from (default: the teacher checkpoint's)")
    s.add_argument("--sandwich", default=",".join(SANDWICH),
                   help=f"the cycle of subnets trained, one per step, from {', '.join(SANDWICH_PHASES)} "
                        f"(default {','.join(SANDWICH)}: the sandwich rule)")
    _add_schedule(s, 4000)
    methods = list_methods("student")
    st = sub.add_parser("student", help="train one student with a training method (one trial of nas.search)")
    st.add_argument("--method", default=methods[0], choices=methods)
    st.add_argument("--budget", help="MACs budget per image: 0.5G, 500M or 5e8")
    st.add_argument("--space", default="resnet", help="resnet | inception | agd | unet (spaces/<task>/NAME.yaml) | PATH.yaml")
    st.add_argument("--task", default="sr4x", help="sr4x (embedded) or a data folder")
    st.add_argument("--teacher", help="teacher checkpoint (default: the shipped sr4x teacher)")
    st.add_argument("--out", required=True, help="folder for the trial's checkpoints (trial/) and the export (student/)")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _add_workers(st)
    _add_run(st)
    chosen = get_method(method or methods[0], "student")
    add_dataclass_arguments(st, chosen.Options, title=f"--method {chosen.name} options")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    method = flag_value(argv, "--method") if argv[:1] == ["student"] else None
    args = build_parser(method).parse_args(argv)
    check_output_folder(args.out, "--out")  # before anything is trained
    try:
        if args.what == "student":
            path = train_student(args, argv)
        else:
            for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
                if getattr(args, name) < 1:
                    raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
            path = train_model(args)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; the last checkpoint in {args.out} is whole: run the same command with "
                                "--resume to continue") from None
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    run(main)
