"""``python -m nas.train teacher|supernet``: train a teacher, or a once-for-all supernet by distillation.

Both loops are pure functions of (seed, step) for their data and sampled subnets, so a run
resumed from its checkpoint (``--resume``) continues exactly as if it had not stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from evaluators.quality import Quality, Reference, evaluate_on, reference
from nas.checkpoint import atomic_save, generator_record, load_generator, safe_load
from nas.cli import Parser, run
from nas.data import Task, check_crop, load_task
from nas.discriminator import PatchDiscriminator, lsgan_loss
from nas.distill import DISTILL_WEIGHT, FeatureCapture, FeatureDistiller
from spaces.errors import UserError
from spaces.space import Config, SearchSpace, load_space
from spaces.supernet import Supernet

TRAIN_FORMAT = "gan-nas/train-v1"
# Fine-tuning an extracted subnet: the supernet's learning rate, which kept improving the student
# where 1e-4 had levelled off (bench/ofa_finetune.py, numbers in the README).
FINETUNE_LR = 4e-4


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when asked (the convs dominate and tolerate it); nothing on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Loop:
    """What both trainings share: the task, the schedule, and where checkpoints go."""

    task: Task
    out: Path
    steps: int
    batch_size: int
    crop: int
    lr: float
    seed: int
    eval_every: int
    checkpoint_every: int
    device: torch.device
    gan_weight: float
    amp: bool
    progress: bool
    stop_at: int | None = None

    @property
    def last_step(self) -> int:
        """The step this run ends at: --steps, or --stop-at when it comes first."""
        return min(self.steps, self.stop_at) if self.stop_at else self.steps

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pth"

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = self.task.batch(seed=self.seed, step=step, batch_size=self.batch_size, crop=self.crop)
        return x.to(self.device), (y.to(self.device) if y is not None else None)


def _adam(params, lr: float, adversarial: bool) -> torch.optim.Adam:
    # pix2pix's betas for adversarial training; the usual ones for plain regression
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999) if adversarial else (0.9, 0.999))


def cosine_lr(base: float, step: int, steps: int) -> float:
    """Cosine decay to zero over the run; a function of the step alone, so resuming keeps the schedule."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(1, steps)))


def _set_lr(optimizers, lr: float) -> None:
    for opt in optimizers:
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = lr


def _discriminator_step(d: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss = 0.5 * (lsgan_loss(d(real), True) + lsgan_loss(d(fake.detach()), False))
    loss.backward()
    opt.step()
    return float(loss.detach())


def _adversarial(loss: torch.Tensor, disc: nn.Module | None, out: torch.Tensor, weight: float) -> torch.Tensor:
    return loss if disc is None else loss + weight * lsgan_loss(disc(out), True)


def _optimize(loss: torch.Tensor, opt_g: torch.optim.Optimizer, disc: nn.Module | None,
              opt_d: torch.optim.Optimizer | None, real: torch.Tensor, fake: torch.Tensor) -> None:
    """One generator step, then (with a GAN loss) one discriminator step on the same images."""
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    if disc is not None:
        _discriminator_step(disc, opt_d, real, fake)


def _run_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def _check_resume(saved: dict[str, Any], args: argparse.Namespace, keys: tuple[str, ...]) -> None:
    for key in keys:
        if str(saved.get(key)) != str(getattr(args, key)):
            raise UserError(f"--resume: {args.out}/checkpoint.pth was trained with --{key.replace('_', '-')} "
                            f"{saved.get(key)}, not {getattr(args, key)}; use the same value or another --out")


def _make_loop(args: argparse.Namespace) -> Loop:
    task = load_task(args.task)
    check_crop(task, args.crop)
    return Loop(task=task, out=Path(args.out), steps=args.steps, batch_size=args.batch_size, crop=args.crop,
                lr=args.lr, seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                device=pick_device(args.device), gan_weight=args.gan_weight, amp=args.amp,
                progress=not args.no_progress, stop_at=args.stop_at)


def _prepare_out(loop: Loop, resume: bool) -> dict[str, Any] | None:
    if resume:
        if not loop.checkpoint.is_file():
            raise UserError(f"--resume: no checkpoint at {loop.checkpoint}; start without --resume")
        state = safe_load(loop.checkpoint)
        if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
            raise UserError(f"--resume: {loop.checkpoint} is not a training checkpoint of nas.train")
        return state
    if loop.checkpoint.exists():
        raise UserError(f"{loop.checkpoint} exists; pass --resume to continue it or choose another --out")
    loop.out.mkdir(parents=True, exist_ok=True)
    return None


def _val_quality(model: nn.Module, loop: Loop, teacher: Reference | None = None) -> Quality:
    return evaluate_on(model, loop.task.eval_set("val"), teacher, device=loop.device)


# --------------------------------------------------------------------------------------- teacher


def train_teacher(args: argparse.Namespace) -> Path:
    loop = _make_loop(args)
    if not loop.task.paired:
        raise UserError(f"task {args.task} has no targets ({loop.task.kind} layout): a teacher is trained on pairs "
                        "(sr4x or a pix2pix train/ val/ layout); import a CycleGAN teacher with --teacher instead")
    saved = _prepare_out(loop, args.resume)
    if saved is not None:
        _check_resume(saved["args"], args, ("space", "config", "task", "seed", "batch_size", "crop"))
    space = load_space(args.space)
    config = space.decode(args.config)
    torch.manual_seed(args.seed)
    generator = space.build(config).to(loop.device)
    opt_g = _adam(generator.parameters(), loop.lr, loop.gan_weight > 0)
    disc = opt_d = None
    if loop.gan_weight > 0:
        disc = PatchDiscriminator(space.spec.out_channels, ndf=args.ndf).to(loop.device)
        opt_d = _adam(disc.parameters(), loop.lr, True)
    start, elapsed = 0, 0.0
    if saved is not None:
        generator.load_state_dict(saved["generator"]["state_dict"])
        opt_g.load_state_dict(saved["optimizers"]["generator"])
        if disc is not None:
            disc.load_state_dict(saved["discriminator"])
            opt_d.load_state_dict(saved["optimizers"]["discriminator"])
        start, elapsed = saved["step"], saved["train_seconds"]
    metrics: dict[str, float | None] = dict(saved.get("metrics", {})) if saved else {}

    def save(step: int) -> None:
        record = {
            "format": TRAIN_FORMAT, "kind": "teacher", "step": step, "train_seconds": elapsed,
            "args": _run_args(args), "metrics": metrics, "task": args.task,
            "generator": generator_record(generator, space, config, task=args.task, step=step),
            "discriminator": disc.state_dict() if disc is not None else None,
            "discriminator_config": disc.config if disc is not None else None,
            "optimizers": {"generator": opt_g.state_dict(), **({"discriminator": opt_d.state_dict()} if disc else {})},
        }
        atomic_save(record, loop.checkpoint)

    bar = tqdm(range(start, loop.last_step), initial=start, total=loop.steps, desc="teacher", disable=not loop.progress,
               dynamic_ncols=True)
    generator.train()
    for step in bar:
        began = time.perf_counter()
        _set_lr((opt_g, opt_d), cosine_lr(loop.lr, step, loop.steps))
        x, y = loop.batch(step)
        with autocast(loop.device, loop.amp):
            out = generator(x)
            loss = _adversarial(F.l1_loss(out, y), disc, out, loop.gan_weight)
        _optimize(loss, opt_g, disc, opt_d, y, out)
        elapsed += time.perf_counter() - began
        done = step + 1
        if done % loop.eval_every == 0 or done == loop.steps:
            quality = _val_quality(generator, loop)
            metrics.update({"val_psnr": quality.psnr, "val_ssim": quality.ssim, "step": done})
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", val_psnr=f"{metrics.get('val_psnr') or 0:.2f}")
        if done % loop.checkpoint_every == 0 or done == loop.last_step:
            save(done)
    bar.close()
    if start >= loop.last_step:
        save(start)
    return loop.checkpoint


# -------------------------------------------------------------------------------------- supernet


SANDWICH = ("max", "min", "random", "random")
SANDWICH_PHASES = ("max", "min", "random")


def sandwich_config(space: SearchSpace, seed: int, step: int, schedule: tuple[str, ...] = SANDWICH) -> Config:
    """The subnet of a step: ``schedule`` cycled over steps; by default the largest, the smallest,
    then two random subnets, in turn (the sandwich rule spread over steps)."""
    phase = schedule[step % len(schedule)]
    if phase == "max":
        return space.max_config()
    if phase == "min":
        return space.min_config()
    return space.sample(random.Random(seed * 7_919 + step))


def parse_sandwich(text: str) -> tuple[str, ...]:
    phases = tuple(p.strip() for p in text.split(","))
    wrong = [p for p in phases if p not in SANDWICH_PHASES]
    if wrong:
        raise UserError(f"--sandwich {text!r}: {', '.join(map(repr, wrong))} is not a phase; give a "
                        f"comma-separated cycle of {', '.join(SANDWICH_PHASES)} (default {','.join(SANDWICH)})")
    return phases


def _trunk_widths(module: nn.Module, in_channels: int, device: torch.device) -> list[int]:
    """Output channels of every trunk block, read off one tiny forward pass."""
    capture = FeatureCapture(list(module.trunk))
    with torch.no_grad():
        module(torch.zeros(1, in_channels, 32, 32, device=device))
    capture.remove()
    return [o.shape[1] for o in capture.outputs]


def make_distiller(student: nn.Module, teacher: nn.Module, *, layers: int, device: torch.device) -> FeatureDistiller:
    """Feature distillation from ``teacher``'s trunk into ``student``'s (a supernet's or a subnet's)."""
    channels = student.stem[1].in_channels
    return FeatureDistiller(student.trunk, teacher.trunk, layers=layers,
                            student_width=max(_trunk_widths(student, channels, device)),
                            teacher_widths=_trunk_widths(teacher, channels, device)).to(device)


def distill_loss(out: torch.Tensor, target: torch.Tensor, distiller: FeatureDistiller, weight: float) -> torch.Tensor:
    """Reconstruction of the target (ground truth, or the teacher's output for unpaired data) plus
    the feature distillation of the same forward pass."""
    return F.l1_loss(out, target) + weight * distiller.loss()


def finetune(student: nn.Module, teacher: nn.Module, task: Task, *, steps: int, batch_size: int = 16, crop: int = 64,
             lr: float = FINETUNE_LR, seed: int = 0, device: torch.device | str = "cpu",
             distill_weight: float = DISTILL_WEIGHT, distill_layers: int = 3,
             mappers: dict[str, torch.Tensor] | None = None, progress: bool = True) -> nn.Module:
    """Fine-tune an extracted subnet with the supernet's distillation loss (mappers inherited when given)."""
    device = torch.device(device)
    student, teacher = student.to(device).train(), teacher.to(device).eval().requires_grad_(False)
    distiller = make_distiller(student, teacher, layers=distill_layers, device=device)
    if mappers is not None:  # the supernet's mappers, cut to this subnet's widths (first-k, as its weights)
        own = distiller.mappers.state_dict()
        distiller.mappers.load_state_dict({k: mappers[k][tuple(slice(0, n) for n in v.shape)] for k, v in own.items()})
    opt = _adam(list(student.parameters()) + list(distiller.mappers.parameters()), lr, False)
    for step in tqdm(range(steps), desc="fine-tune", disable=not progress, dynamic_ncols=True):
        _set_lr((opt,), cosine_lr(lr, step, steps))
        x, y = task.batch(seed=seed, step=step, batch_size=batch_size, crop=crop)
        x = x.to(device)
        with torch.no_grad():
            t_out = teacher(x)
        loss = distill_loss(student(x), y.to(device) if y is not None else t_out, distiller, distill_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    distiller.detach_hooks()
    return student.eval()


def load_supernet(path: str | Path) -> tuple[Supernet, dict[str, Any]]:
    """A trained supernet and its checkpoint record (task, teacher, metrics)."""
    record = safe_load(path)
    if not isinstance(record, dict) or record.get("format") != TRAIN_FORMAT or record.get("kind") != "supernet":
        raise UserError(f"{path} is not a supernet checkpoint of nas.train supernet")
    from spaces.schema import parse_space

    space = SearchSpace(parse_space(record["space_yaml"], file=f"{path} (embedded space)", name=record["space_name"]))
    supernet = Supernet(space)
    supernet.net.load_state_dict(record["supernet"])
    return supernet.eval(), record


def train_supernet(args: argparse.Namespace) -> Path:
    schedule = parse_sandwich(args.sandwich)
    loop = _make_loop(args)
    saved = _prepare_out(loop, args.resume)
    if saved is not None:
        _check_resume(saved["args"], args, ("space", "teacher", "task", "seed", "batch_size", "crop", "method"))
        if parse_sandwich(saved["args"].get("sandwich", ",".join(SANDWICH))) != schedule:
            raise UserError(f"--resume: {args.out}/checkpoint.pth was trained with --sandwich "
                            f"{saved['args'].get('sandwich', ','.join(SANDWICH))}, not {args.sandwich}; use the same "
                            "value or another --out")
    space = load_space(args.space)
    teacher = load_generator(args.teacher)
    if teacher.space.spec.in_channels != space.spec.in_channels or teacher.space.spec.out_channels != space.spec.out_channels:
        raise UserError(f"teacher {args.teacher} maps {teacher.space.spec.in_channels} to {teacher.space.spec.out_channels} "
                        f"channels but space {space.name} maps {space.spec.in_channels} to {space.spec.out_channels}")
    teacher_net = teacher.module.to(loop.device).eval().requires_grad_(False)
    torch.manual_seed(args.seed)
    supernet = Supernet(space).to(loop.device)
    distiller = make_distiller(supernet.net, teacher_net, layers=args.distill_layers, device=loop.device)
    opt_g = _adam(list(supernet.parameters()) + list(distiller.mappers.parameters()), loop.lr, loop.gan_weight > 0)
    disc = opt_d = None
    if loop.gan_weight > 0:
        disc, opt_d = _supernet_discriminator(args, space, loop)
    start, elapsed = 0, 0.0
    if saved is not None:
        supernet.net.load_state_dict(saved["supernet"])
        distiller.mappers.load_state_dict(saved["mappers"])
        opt_g.load_state_dict(saved["optimizers"]["generator"])
        if disc is not None:
            disc.load_state_dict(saved["discriminator"])
            opt_d.load_state_dict(saved["optimizers"]["discriminator"])
        start, elapsed = saved["step"], saved["train_seconds"]
    metrics: dict[str, Any] = dict(saved.get("metrics", {})) if saved else {}
    val_teacher = reference(teacher_net, loop.task.eval_set("val"), loop.device)

    def save(step: int) -> None:
        record = {
            "format": TRAIN_FORMAT, "kind": "supernet", "method": args.method, "step": step,
            "train_seconds": elapsed, "args": _run_args(args), "metrics": metrics, "task": args.task,
            "teacher": str(args.teacher), "space_name": space.name, "space_yaml": space.spec_text,
            "supernet": {k: v.detach().cpu() for k, v in supernet.net.state_dict().items()},
            "mappers": distiller.mappers.state_dict(),
            "discriminator": disc.state_dict() if disc is not None else None,
            "optimizers": {"generator": opt_g.state_dict(), **({"discriminator": opt_d.state_dict()} if disc else {})},
        }
        atomic_save(record, loop.checkpoint)

    bar = tqdm(range(start, loop.last_step), initial=start, total=loop.steps, desc=f"supernet {space.name}",
               disable=not loop.progress, dynamic_ncols=True)
    supernet.train()
    for step in bar:
        began = time.perf_counter()
        _set_lr((opt_g, opt_d), cosine_lr(loop.lr, step, loop.steps))
        supernet.set_active(sandwich_config(space, loop.seed, step, schedule))
        x, y = loop.batch(step)
        with autocast(loop.device, loop.amp):
            with torch.no_grad():
                t_out = teacher_net(x)
            out = supernet(x)
            target = y if y is not None else t_out
            loss = _adversarial(distill_loss(out, target, distiller, args.distill_weight), disc, out, loop.gan_weight)
        _optimize(loss, opt_g, disc, opt_d, target, out)
        elapsed += time.perf_counter() - began
        done = step + 1
        if done % loop.eval_every == 0 or done == loop.steps:
            for name, config in (("max", space.max_config()), ("min", space.min_config())):
                supernet.set_active(config)
                quality = _val_quality(supernet, loop, val_teacher)
                metrics[f"val_{name}"] = quality.as_dict()
            metrics["step"] = done
        shown = metrics.get("val_max", {})
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", max_psnr=f"{shown.get('psnr') or shown.get('fidelity_psnr') or 0:.2f}")
        if done % loop.checkpoint_every == 0 or done == loop.last_step:
            save(done)
    bar.close()
    distiller.detach_hooks()
    if start >= loop.last_step:
        save(start)
    return loop.checkpoint


def _supernet_discriminator(args: argparse.Namespace, space: SearchSpace, loop: Loop):
    """A PatchGAN initialised from the teacher's (its training checkpoint or --discriminator)."""
    state, config = None, {"ndf": args.ndf}
    source = args.discriminator or args.teacher
    record = safe_load(source)
    if isinstance(record, dict) and record.get("format") == TRAIN_FORMAT and record.get("discriminator"):
        state, config = record["discriminator"], record.get("discriminator_config") or config
    elif args.discriminator:
        state = record
        config = {"ndf": record["model.0.weight"].shape[0]} if "model.0.weight" in record else config
    disc = PatchDiscriminator(space.spec.out_channels, ndf=config["ndf"],
                              n_layers=config.get("n_layers", 3), norm=config.get("norm", "instance"))
    if state is not None:
        try:
            disc.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"discriminator from {source} does not fit a PatchGAN: {str(exc).splitlines()[0]}") from None
    disc = disc.to(loop.device)
    return disc, _adam(disc.parameters(), loop.lr, True)


# ------------------------------------------------------------------------------------------- CLI


def _add_common(p: argparse.ArgumentParser, default_steps: int) -> None:
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
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--resume", action="store_true", help="continue --out/checkpoint.pth")
    p.add_argument("--stop-at", type=int, help="stop after this step with a checkpoint (for time-limited jobs); "
                   "continue later with --resume")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> Parser:
    parser = Parser(prog="python -m nas.train", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True, parser_class=Parser)
    t = sub.add_parser("teacher", help="train a teacher generator")
    t.add_argument("--space", default="resnet", help="space name or YAML path")
    t.add_argument("--config", default="max", help="the teacher's config in that space (default max)")
    _add_common(t, 4000)
    s = sub.add_parser("supernet", help="train a once-for-all supernet by distillation")
    s.add_argument("--space", default="resnet", help="space name or YAML path")
    s.add_argument("--teacher", required=True, help="teacher checkpoint (nas.train or pix2pix *_net_G*.pth)")
    s.add_argument("--method", default="ofa", choices=["ofa"])
    s.add_argument("--distill-weight", type=float, default=DISTILL_WEIGHT,
                   help="weight of feature distillation (MSE relative to the teacher features' mean square) "
                        "against the L1 reconstruction")
    s.add_argument("--distill-layers", type=int, default=3, help="teacher trunk blocks to distil from")
    s.add_argument("--discriminator", help="PatchGAN state dict to start from (default: the teacher checkpoint's)")
    s.add_argument("--sandwich", default=",".join(SANDWICH),
                   help=f"the cycle of subnets trained, one per step, from {', '.join(SANDWICH_PHASES)} "
                        f"(default {','.join(SANDWICH)}: the sandwich rule)")
    _add_common(s, 4000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    path = train_teacher(args) if args.what == "teacher" else train_supernet(args)
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    run(main)
