"""``python -m nas.publish``: turn a training checkpoint into a small shippable file plus a manifest entry.

The entry records what a reader needs to trust and reproduce the file: the exact training
command, seed, data split, training time, val/test metrics (with bicubic for reference on
super-resolution), MACs, parameters and the sha256 of the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from evaluators.quality import evaluate, generate
from nas.checkpoint import atomic_save, generator_record, load_generator, safe_load
from nas.cli import Parser, run
from nas.data import Task, load_task
from nas.files import atomic_write_text
from spaces.errors import UserError


def training_command(what: str, args: dict[str, Any]) -> str:
    """The ``python -m nas.train`` command line that the stored arguments stand for."""
    parts = ["python -m nas.train", what]
    for key, value in args.items():
        if key in ("what", "resume", "stop_at") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _quality(model: torch.nn.Module, task: Task, split: str, teacher: torch.nn.Module | None = None) -> dict:
    images = task.eval_images(split)
    inputs = [x for _, x, _ in images]
    targets = [y for _, _, y in images] if task.split(split).targets is not None else None
    teacher_outputs = generate(teacher, inputs) if teacher is not None else None
    return evaluate(generate(model, inputs), targets, teacher_outputs).as_dict()


def _bicubic(task: Task, split: str) -> float | None:
    images = task.eval_images(split)
    if task.kind != "sr4x":
        return None
    return evaluate([x for _, x, _ in images], [y for _, _, y in images]).psnr


def publish(checkpoint: Path, out: Path, name: str, manifest: Path) -> dict[str, Any]:
    record = safe_load(checkpoint)
    if not isinstance(record, dict) or record.get("kind") not in ("teacher", "supernet"):
        raise UserError(f"{checkpoint} is not a training checkpoint of nas.train (teacher or supernet)")
    task = load_task(record["task"])
    entry: dict[str, Any] = {
        "kind": record["kind"], "file": out.name, "command": training_command(record["kind"], record["args"]),
        "seed": record["args"]["seed"], "steps": record["step"], "task": record["task"],
        "split": task.notes.get("split", ""), "train_seconds": round(record["train_seconds"], 1),
        "torch": torch.__version__,
    }
    if record["kind"] == "teacher":
        teacher = load_generator(checkpoint)
        atomic_save(generator_record(teacher.module, teacher.space, teacher.config, task=record["task"],
                                     step=record["step"]), out)
        cost = teacher.space.cost(teacher.config)
        entry.update(config=teacher.space.encode(teacher.config), space=teacher.space.name,
                     macs={"torchprofile": cost.torchprofile, "fvcore": cost.fvcore}, params=cost.params,
                     metrics={s: _quality(teacher.module, task, s) for s in ("val", "test")},
                     bicubic_psnr={s: _bicubic(task, s) for s in ("val", "test")})
    else:
        from nas.train import load_supernet

        supernet, _ = load_supernet(checkpoint)
        teacher = load_generator(record["teacher"]).module
        slim = {k: v for k, v in record.items() if k not in ("optimizers", "discriminator")}
        atomic_save(slim, out)
        space = supernet.space
        metrics = {}
        for label, config in (("max", space.max_config()), ("min", space.min_config())):
            sub = supernet.extract(config)
            metrics[label] = {"config": space.encode(config), "macs_torchprofile": space.macs(config),
                              **{s: _quality(sub, task, s, teacher) for s in ("val", "test")}}
        entry.update(space=space.name, teacher=Path(record["teacher"]).name, metrics=metrics)
    entry.update(sha256=sha256(out), size_bytes=out.stat().st_size)
    entries = json.loads(manifest.read_text()) if manifest.exists() else {}
    entries[name] = entry
    atomic_write_text(manifest, json.dumps(entries, indent=2) + "\n")
    return entry


def build_parser() -> Parser:
    p = Parser(prog="python -m nas.publish", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="training checkpoint (nas.train)")
    p.add_argument("--out", required=True, help="file to write (weights only, no optimizer state)")
    p.add_argument("--name", required=True, help="key of the entry in the manifest, e.g. teacher or supernet_resnet")
    p.add_argument("--manifest", help="manifest.json to update (default: beside --out)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    entry = publish(Path(args.checkpoint), out, args.name, Path(args.manifest) if args.manifest else out.parent / "manifest.json")
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    run(main)
