"""Reading and writing generator checkpoints, safely and atomically.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: a pickle that would run
code is refused. A generator checkpoint of this project holds the space file's text, the
config string and the state dict, so it rebuilds without the space file it came from.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.files import atomic_write
from nas.pix2pix import import_pix2pix
from spaces.errors import UserError
from spaces.space import Config, SearchSpace
from spaces.supernet import Supernet

FORMAT = "gan-nas/generator-v1"
# A training checkpoint of nas.training: its ``kind`` says what it trained (teacher, supernet, student).
TRAIN_FORMAT = "gan-nas/train-v1"
TRAIN_KINDS = ("teacher", "supernet", "student")


# What torch.save writes starts like a zip archive (the default since PyTorch 1.6) or a pickle.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")
_OTHER_FORMATS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                  (b"%PDF", "a PDF document"))


def _not_a_checkpoint(head: bytes) -> str | None:
    """What a file that cannot be a torch.save checkpoint looks like, from its first bytes; None if it may be one."""
    if head.startswith(_CHECKPOINT_MAGIC):
        return None
    if not head:
        return "an empty file"
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        return "a file of another format"
    return "a JSON file" if text[:1] in "{[" else "a text file (YAML, CSV or similar)"


def safe_load(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True``; one-line UserError for anything else."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; give the path of a .pth file")
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; give the path of a .pth file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    what = _not_a_checkpoint(head)
    if what is not None:
        raise UserError(f"{path} is not a PyTorch checkpoint (it is {what}); give a .pth file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "Unsupported" in line or "GLOBAL" in line), reason[0] if reason else "")
        raise UserError(f"refused to load {path}: it is a pickle that would run code, not plain weights "
                        f"({detail.strip()}); re-save it as a state dict of tensors") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"cannot read checkpoint {path}: it is damaged or not a PyTorch checkpoint ({first})") from None


def _few(items: list[str], shown: int = 3) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def load_weights(module: nn.Module, state: Any, *, source: str, what: str) -> None:
    """``module.load_state_dict(state)``, or one line saying what does not fit: not a dict of tensors, or
    which keys are missing or unexpected and which shapes differ (torch's own message spans many lines)."""
    where = f"{source}: its {what}" if source else f"its {what}"
    if not isinstance(state, dict):
        raise UserError(f"{where} is a {type(state).__name__}, not a state dict (names to tensors); the file is "
                        "damaged or of another kind")
    odd = next(((k, v) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if odd is not None:
        raise UserError(f"{where} is not a state dict: its entry {odd[0]!r} is a {type(odd[1]).__name__}, not a "
                        "tensor; the file is damaged or of another kind")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{label} {_few(items)}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shapes:", shapes)) if items]
    if problems:
        raise UserError(f"{where} does not fit the network it describes ({'; '.join(problems)})")
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise UserError(f"{where} holds NaN or infinite values ({_few(broken)}); the training that wrote it "
                        "diverged or the file is damaged")
    module.load_state_dict(state)


def record_field(record: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str) -> Any:
    """``record[key]``, checked to be a ``kind``; one line when it is missing or of another type."""
    value = record.get(key)
    if not isinstance(value, kind):
        found = "missing" if key not in record else f"a {type(value).__name__}"
        raise UserError(f"{source} is damaged: its '{key}' is {found}; write it again with this project's commands")
    return value


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file: never half-written."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@dataclass
class LoadedGenerator:
    """A generator module with the space and config that describe it."""

    module: nn.Module
    space: SearchSpace
    config: Config
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def generator_record(module: nn.Module, space: SearchSpace, config: Config, **meta: Any) -> dict[str, Any]:
    """The dict a generator checkpoint holds (see ``FORMAT``)."""
    return {
        "format": FORMAT,
        "space_name": space.name,
        "space_yaml": space.spec_text,
        "config": space.encode(config),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "meta": meta,
    }


def save_generator(path: str | Path, module: nn.Module, space: SearchSpace, config: Config, **meta: Any) -> None:
    atomic_save(generator_record(module, space, config, **meta), path)


def generator_from_record(record: dict[str, Any], source: str) -> LoadedGenerator:
    space = SearchSpace.from_text(record_field(record, "space_yaml", str, source), source=f"{source} (embedded space)",
                                  name=str(record.get("space_name", "checkpoint")))
    try:
        config = space.decode(record_field(record, "config", str, source))
    except UserError as exc:
        raise UserError(f"{source} is damaged: its {exc}") from None
    module = space.build(config)
    load_weights(module, record.get("state_dict"), source=source, what="state dict")
    meta = record.get("meta") or {}
    return LoadedGenerator(module.eval(), space, config, source, dict(meta) if isinstance(meta, dict) else {})


def load_generator(path: str | Path) -> LoadedGenerator:
    """A generator from a checkpoint of this project or a pix2pix/CycleGAN ``*_net_G*.pth``."""
    data = safe_load(path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return generator_from_record(data, str(path))
    if isinstance(data, dict) and data.get("format") == TRAIN_FORMAT:
        if data.get("kind") == "supernet":
            raise UserError(f"{path} is a supernet checkpoint (nas.train supernet), not one generator; export a subnet "
                            "with nas.export and give its folder or model.pth")
        generator = data.get("generator")
        if not (isinstance(generator, dict) and generator.get("format") == FORMAT):
            raise UserError(f"{path} is a {data.get('kind')} training checkpoint whose generator entry is damaged "
                            f"(a {type(generator).__name__})")
        return generator_from_record(generator, str(path))  # a teacher's (or student's) training checkpoint
    space, config, module = import_pix2pix(data, source=str(path))
    return LoadedGenerator(module, space, config, str(path))


def read_training_record(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """A training checkpoint of nas.train (optionally of one ``kind``); UserError for anything else."""
    record = safe_load(path)
    if not isinstance(record, dict) or record.get("format") != TRAIN_FORMAT or record.get("kind") not in TRAIN_KINDS:
        raise UserError(f"{path} is not a training checkpoint of nas.train")
    if kind is not None and record["kind"] != kind:
        raise UserError(f"{path} is a {record['kind']} checkpoint of nas.train, not a {kind} checkpoint "
                        f"(nas.train {kind})")
    return record


def load_supernet(path: str | Path) -> tuple[Supernet, dict[str, Any]]:
    """A trained supernet and its checkpoint record (task, teacher, metrics)."""
    record = safe_load(path)
    if not isinstance(record, dict) or record.get("format") != TRAIN_FORMAT or record.get("kind") != "supernet":
        raise UserError(f"{path} is not a supernet checkpoint of nas.train supernet")
    space = SearchSpace.from_text(record_field(record, "space_yaml", str, str(path)), source=f"{path} (embedded space)",
                                  name=str(record.get("space_name", "supernet")))
    supernet = Supernet(space)
    load_weights(supernet.net, record.get("supernet"), source=str(path), what="supernet weights")
    mappers = record.get("mappers")  # the distillation's 1x1 adaptors, which fine-tuning a subnet starts from
    if mappers is not None and not (isinstance(mappers, dict) and all(isinstance(v, torch.Tensor)
                                                                      for v in mappers.values())):
        raise UserError(f"{path} is damaged: its 'mappers' is a {type(mappers).__name__}, not a state dict")
    return supernet.eval(), record
