"""``python -m nas.publish``: turn a training checkpoint into a small shippable file plus a manifest entry.

The entry records what a reader needs to trust and reproduce the file: the exact training
command, seed, data split, training time, val/test metrics (with bicubic for reference on
super-resolution), MACs, parameters and the sha256 of the file. Metrics are on whole images, per image
and mean, with the share of the teacher's gain over bicubic that a student keeps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from evaluators.quality import PROTOCOL, Reference, evaluate_on, reference
from nas.checkpoint import (LoadedGenerator, atomic_save, generator_record, load_generator, load_supernet,
                            read_training_record, record_field)
from nas.cli import Parser, run
from nas.data import Task, load_task
from nas.files import atomic_write_text, check_output_file
from nas.methods.ofa import supernet_calibration
from spaces.errors import UserError
from spaces.supernet import Supernet


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


def _references(teacher: torch.nn.Module, task: Task) -> dict[str, Reference]:
    return {split: reference(teacher, task.eval_set(split)) for split in ("val", "test")}


def measure_teacher(teacher: LoadedGenerator, task: Task) -> dict[str, Any]:
    """A teacher's manifest fields: cost, and val/test quality beside bicubic's."""
    cost = teacher.space.cost(teacher.config)
    refs = _references(teacher.module, task)
    return {"config": teacher.space.encode(teacher.config), "space": teacher.space.name,
            "macs": {"torchprofile": cost.torchprofile, "fvcore": cost.fvcore}, "params": cost.params,
            "protocol": PROTOCOL, "metrics": {s: r.teacher.as_dict(per_image=True) for s, r in refs.items()},
            "bicubic_psnr": {s: r.baseline.psnr if r.baseline else None for s, r in refs.items()},
            "teacher_gain_db": {s: r.teacher_gain for s, r in refs.items()}}


def measure_supernet(supernet: Supernet, teacher: torch.nn.Module, task: Task,
                     calibration: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """A supernet's manifest fields: its largest and smallest subnets' val/test quality (inherited weights,
    batch norms recalibrated on ``calibration`` where there are any)."""
    refs = _references(teacher, task)
    space = supernet.space
    metrics = {}
    for label, config in (("max", space.max_config()), ("min", space.min_config())):
        sub = supernet.extract(config, calibration=calibration)
        metrics[label] = {"config": space.encode(config), "macs_torchprofile": space.macs(config),
                          **{s: evaluate_on(sub, r.eval_set, r).as_dict(per_image=True) for s, r in refs.items()}}
    return {"space": space.name, "protocol": PROTOCOL, "metrics": metrics}


def _read_manifest(manifest: Path) -> dict[str, Any]:
    if not manifest.is_file():
        raise UserError(f"manifest {manifest} not found")
    try:
        entries = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"manifest {manifest} is not valid JSON ({exc.__class__.__name__}); fix or remove it") from None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise UserError(f"manifest {manifest} is not an object of entries; fix or remove it")
    return entries


def remeasure(manifest: Path) -> dict[str, Any]:
    """Measure every entry of ``manifest`` again with today's evaluation protocol (the files are unchanged)."""
    entries = _read_manifest(manifest)
    for name, entry in entries.items():
        missing = [k for k in ("kind", "file", "sha256", "task") if not isinstance(entry.get(k), str)]
        if missing or entry["kind"] not in ("teacher", "supernet") or not isinstance(entry.get("teacher", ""), str):
            raise UserError(f"--remeasure: entry {name!r} of {manifest} is not a teacher or supernet entry of "
                            f"nas.publish ({'missing or not text: ' + ', '.join(missing) if missing else 'its kind or teacher'})")
        path = manifest.parent / entry["file"]
        if not path.is_file() or sha256(path) != entry["sha256"]:
            raise UserError(f"{path} {'does not match' if path.is_file() else 'is missing; it should match'} the "
                            f"sha256 of manifest entry {name!r}; publish it again instead")
        task = load_task(entry["task"])
        if entry["kind"] == "teacher":
            entry.update(measure_teacher(load_generator(path), task))
        else:
            teacher = manifest.parent / entry.get("teacher", "")
            if not teacher.is_file():
                raise UserError(f"--remeasure: supernet entry {name!r} was distilled from {entry.get('teacher')!r}, "
                                f"which is not beside {manifest}; publish that teacher there first")
            supernet, record = load_supernet(path)
            entry.update(measure_supernet(supernet, load_generator(teacher).module, task,
                                          supernet_calibration(supernet, record, entry["task"], "cpu")))
        entry.update(split=task.notes.get("split", ""))
        print(f"remeasured {name}", flush=True)
    atomic_write_text(manifest, json.dumps(entries, indent=2) + "\n")
    return entries


def publish(checkpoint: Path, out: Path, name: str, manifest: Path) -> dict[str, Any]:
    """Measure the checkpoint, then write its slim file and the manifest's entry: nothing is written until
    everything was read and measured, and ``out`` may be none of the files read."""
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"--out {out} is the training checkpoint itself; write the slim file elsewhere so that the "
                        "checkpoint can still resume")
    if out.resolve() == manifest.resolve():
        raise UserError(f"--out {out} is also the --manifest; give the weights and the manifest different files")
    entries = _read_manifest(manifest) if manifest.exists() else {}  # before anything is written
    record = read_training_record(checkpoint)
    if record["kind"] not in ("teacher", "supernet"):
        raise UserError(f"{checkpoint} is a {record['kind']} checkpoint; publish teachers and supernets")
    args = record_field(record, "args", dict, str(checkpoint))
    task_spec = record_field(record, "task", str, str(checkpoint))
    step = record_field(record, "step", int, str(checkpoint))
    seconds = record_field(record, "train_seconds", (int, float), str(checkpoint))
    task = load_task(task_spec)
    entry: dict[str, Any] = {
        "kind": record["kind"], "file": out.name, "command": training_command(record["kind"], args),
        "seed": args.get("seed"), "steps": step, "task": task_spec, "split": task.notes.get("split", ""),
        "train_seconds": round(seconds, 1), "torch": torch.__version__,
    }
    if record["kind"] == "teacher":
        teacher = load_generator(checkpoint)
        slim: dict[str, Any] = generator_record(teacher.module, teacher.space, teacher.config, task=task_spec, step=step)
        entry.update(measure_teacher(teacher, task))
    else:
        supernet, _ = load_supernet(checkpoint)
        teacher_path = Path(record_field(record, "teacher", str, str(checkpoint)))
        if out.resolve() == teacher_path.resolve():
            raise UserError(f"--out {out} is the teacher this supernet was distilled from; write the slim file "
                            "elsewhere")
        slim = {k: v for k, v in record.items() if k not in ("optimizers", "discriminator")}
        entry.update(teacher=teacher_path.name,
                     **measure_supernet(supernet, load_generator(teacher_path).module, task,
                                        supernet_calibration(supernet, record, task_spec, "cpu")))
    atomic_save(slim, out)
    entry.update(sha256=sha256(out), size_bytes=out.stat().st_size)
    entries[name] = entry
    atomic_write_text(manifest, json.dumps(entries, indent=2) + "\n")
    return entry


def build_parser() -> Parser:
    p = Parser(prog="python -m nas.publish", description=__doc__)
    p.add_argument("--checkpoint", help="training checkpoint (nas.train)")
    p.add_argument("--out", help="file to write (weights only, no optimizer state)")
    p.add_argument("--name", help="key of the entry in the manifest, e.g. teacher or supernet_resnet")
    p.add_argument("--manifest", help="manifest.json to update (default: beside --out)")
    p.add_argument("--remeasure", action="store_true",
                   help="measure every entry of --manifest again with today's evaluation protocol, files unchanged")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.remeasure:
        if not args.manifest or args.checkpoint or args.out or args.name:
            raise UserError("--remeasure takes --manifest only (the manifest whose entries to measure again)")
        remeasure(check_output_file(args.manifest, "--manifest"))
        return 0
    missing = [f"--{k}" for k in ("checkpoint", "out", "name") if not getattr(args, k)]
    if missing:
        raise UserError(f"{', '.join(missing)} required (or --remeasure --manifest FILE)")
    out = check_output_file(args.out, "--out")
    manifest = check_output_file(args.manifest or out.parent / "manifest.json", "--manifest")
    entry = publish(Path(args.checkpoint), out, args.name, manifest)
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    run(main)
