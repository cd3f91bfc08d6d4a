"""``python -m nas.export``: a subnet of a trained supernet to a standalone checkpoint, TorchScript and ONNX.

Each exported form is run against the PyTorch subnet on the same inputs (two sizes) before the
command reports success; the largest differences are written to ``export.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.checkpoint import load_generator, save_generator
from nas.files import atomic_write, atomic_write_text, check_output_folder, staged_folder
from nas.cli import Parser, at_least, run
from nas.data import Task, check_crop, load_task
from nas.checkpoint import load_supernet
from nas.device import pick_device
from nas.finetune import FINETUNE_LR, finetune
from spaces.errors import UserError
from spaces.space import Config, SearchSpace

TORCHSCRIPT_TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4
CHECK_SHAPES = ((1, 64, 64), (2, 96, 128))


def _check_inputs(channels: int, multiple: int = 4) -> list[torch.Tensor]:
    """Inputs of two sizes and batch sizes, their sides rounded up to the generator's multiple (a U-Net's
    2^num_downs) and kept unequal, so that the dynamic axes are exercised."""
    g = torch.Generator().manual_seed(0)
    shapes = []
    for n, h, w in CHECK_SHAPES:
        h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        shapes.append((n, h, w + multiple if n > 1 and w == h else w))
    return [torch.rand(n, channels, h, w, generator=g) * 2 - 1 for n, h, w in shapes]


def export_torchscript(module: nn.Module, path: Path, channels: int) -> float:
    """Trace to TorchScript; returns the largest output difference on the check inputs."""
    inputs = _check_inputs(channels, getattr(module, "multiple", 4))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, inputs[0])
        atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))
        loaded = torch.jit.load(str(path))
        return max(float((loaded(x) - module(x)).abs().max()) for x in inputs)


def export_onnx(module: nn.Module, path: Path, channels: int) -> float:
    """Export to ONNX with dynamic batch and image size; checked with onnxruntime."""
    import onnxruntime

    inputs = _check_inputs(channels, getattr(module, "multiple", 4))
    dynamic = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "height", 3: "width"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atomic_write(path, lambda tmp: torch.onnx.export(
            module, (inputs[0],), tmp, dynamo=False, input_names=["input"], output_names=["output"],
            dynamic_axes=dynamic, opset_version=17))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return max(float((torch.from_numpy(session.run(None, {"input": x.numpy()})[0]) - module(x)).abs().max())
                   for x in inputs)


def export_generator(module: nn.Module, space: SearchSpace, config: Config, out: Path, *,
                     meta: dict[str, Any]) -> dict[str, Any]:
    """Write model.pth, model.ts, model.onnx and export.json to ``out``; raise if a form disagrees. The
    files are written into a folder beside ``out`` that replaces it once all are checked: an interrupted
    or failed export leaves ``out`` as it was, and running it again works."""
    module = module.cpu().eval()
    channels = space.spec.in_channels
    cost = space.cost(config)
    with staged_folder(out) as staging:
        save_generator(staging / "model.pth", module, space, config, **meta)
        report = {
            "space": space.name, "config": space.encode(config), "resolution": space.resolution,
            "macs": {"torchprofile": cost.torchprofile, "fvcore": cost.fvcore}, "params": cost.params,
            "files": {"checkpoint": "model.pth", "torchscript": "model.ts", "onnx": "model.onnx"},
            "max_abs_diff": {"torchscript": export_torchscript(module, staging / "model.ts", channels),
                             "onnx": export_onnx(module, staging / "model.onnx", channels)},
            "tolerance": {"torchscript": TORCHSCRIPT_TOLERANCE, "onnx": ONNX_TOLERANCE},
            **meta,
        }
        for form, tolerance in report["tolerance"].items():
            if report["max_abs_diff"][form] > tolerance:
                raise UserError(f"exported {form} differs from the PyTorch subnet by "
                                f"{report['max_abs_diff'][form]:.2e} (tolerance {tolerance:.0e}); nothing was "
                                f"written to {out}")
        atomic_write_text(staging / "export.json", json.dumps(report, indent=2) + "\n")
    return report


def build_parser() -> Parser:
    p = Parser(prog="python -m nas.export", description=__doc__)
    p.add_argument("--supernet", required=True, help="supernet checkpoint (nas.train supernet)")
    p.add_argument("--config", required=True, help="config string of the subnet, or max / min")
    p.add_argument("--out", required=True, help="folder to write model.pth, model.ts, model.onnx, export.json")
    p.add_argument("--finetune-steps", type=at_least(0), default=0, help="fine-tune with distillation first (default 0)")
    p.add_argument("--task", help="task for fine-tuning (default: the supernet's)")
    p.add_argument("--teacher", help="teacher for fine-tuning (default: the supernet's)")
    p.add_argument("--lr", type=at_least(1e-12, float), default=FINETUNE_LR,
                   help=f"fine-tuning learning rate (default {FINETUNE_LR:g})")
    p.add_argument("--batch-size", type=at_least(1), default=16)
    p.add_argument("--crop", type=at_least(4), default=64)
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p


def export_trained(row: dict[str, Any], weights: Path | None, out: Path, *, task: str, method: str,
                   teacher: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """Export the student a training trial left in ``weights`` (methods that train per trial); ``keys``
    name the facts of its record's meta that go into the export's."""
    from nas.checkpoint import load_generator

    if weights is None:
        raise UserError(f"trial {row.get('trial_id')} left no student weights; it cannot be exported")
    student = load_generator(weights)
    return export_generator(student.module, student.space, student.config, out,
                            meta={"task": task, "method": method, "teacher": teacher,
                                  **{k: v for k, v in student.meta.items() if k in keys}})


def export_subnet(supernet_path: str | Path, config: str | Config, out: Path, *, finetune_steps: int = 0,
                  task: str | None = None, teacher: str | None = None, lr: float = FINETUNE_LR, batch_size: int = 16,
                  crop: int = 64, seed: int = 0, device: torch.device | str = "cpu",
                  progress: bool = True) -> dict[str, Any]:
    """A subnet of a trained supernet, optionally fine-tuned with the supernet's distillation loss
    (GAN Compression's last step), written by ``export_generator``; returns its report."""
    supernet, record = load_supernet(supernet_path)
    space = supernet.space
    config = space.decode(config) if isinstance(config, str) else space.validate(config)
    from nas.methods.ofa import supernet_calibration

    student = supernet.extract(config, calibration=supernet_calibration(supernet, record, task, "cpu"))
    meta: dict[str, Any] = {"task": record.get("task"), "supernet": str(supernet_path), "finetune_steps": 0}
    if finetune_steps:
        task_spec = task or record["task"]
        loaded_task = load_task(task_spec)
        check_crop(loaded_task, crop)
        teacher_model = load_generator(teacher or record["teacher"])
        student = finetune_subnet(student, record, teacher_model.module, loaded_task, steps=finetune_steps, lr=lr,
                                  batch_size=batch_size, crop=crop, seed=seed, device=device, progress=progress)
        meta.update(task=task_spec, finetune_steps=finetune_steps, finetune_lr=lr)
    return export_generator(student, space, config, out, meta=meta)


def finetune_subnet(student: nn.Module, record: dict[str, Any], teacher: nn.Module, task: Task, *, steps: int,
                    lr: float = FINETUNE_LR, batch_size: int = 16, crop: int = 64, seed: int = 0,
                    device: torch.device | str = "cpu", progress: bool = True) -> nn.Module:
    """An extracted subnet fine-tuned with the distillation loss of the supernet it came from
    (``record``: its checkpoint), starting from the supernet's 1x1 mappers, so that they fit."""
    trained_with = record.get("args", {})
    loss = {k: trained_with[k] for k in ("distill_weight", "distill_layers") if k in trained_with}
    return finetune(student, teacher, task, steps=steps, batch_size=batch_size, crop=crop, lr=lr, seed=seed,
                    device=device, mappers=record.get("mappers"), progress=progress, **loss)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.finetune_steps < 0:
        raise UserError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    out = check_output_folder(args.out, "--out")
    if (out / "model.pth").exists():
        raise UserError(f"{out} already holds an export (model.pth); choose another --out or remove it")
    if out.is_dir() and any(out.iterdir()):  # the export replaces --out as a whole: never a folder with other files
        raise UserError(f"--out {out} holds other files; give a new or empty folder for the export")
    report = export_subnet(args.supernet, args.config, out, finetune_steps=args.finetune_steps, task=args.task,
                           teacher=args.teacher, lr=args.lr, batch_size=args.batch_size, crop=args.crop,
                           seed=args.seed, device=pick_device(args.device), progress=not args.no_progress)
    macs = report["macs"]
    print(f"exported {report['config']} ({macs['torchprofile'] / 1e9:.3f}G MACs torchprofile, "
          f"{macs['fvcore'] / 1e9:.3f}G fvcore, {report['params']:,} params) to {out}")
    print(f"  TorchScript max |diff| {report['max_abs_diff']['torchscript']:.1e}, "
          f"ONNX (onnxruntime) max |diff| {report['max_abs_diff']['onnx']:.1e}")
    return 0


if __name__ == "__main__":
    run(main)
