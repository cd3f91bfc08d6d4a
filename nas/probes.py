"""Pictures of a run's candidates on a few fixed val crops, for people who judge a generator by looking.

The driver writes, under ``runs/NAME/probes/``:

    probes.json                 the crops (image, box) and the teacher's and the input's PSNR on each
    input_I.png target_I.png teacher_I.png      once per run
    trials/ID/student_I.png     the output of each Pareto-front member, drawn whenever trials.csv is rewritten
                                (a batch of rows) and when the search ends (from the supernet for ofa, from the
    trials/ID/diff_I.png        trial's student for training methods), |student - teacher| as a heat map,
    trials/ID/probe.json        and its PSNR against the target and against the teacher per crop

Only front members have pictures, and a trial that leaves the front loses its own, so the folder's size
is bounded by the front's (4 crops of 128x128: about 0.18 MB a member, 0.3 MB for the reference), not by the trial count. The
dashboard reads these files and runs no model.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from evaluators.quality import EvalSet, psnr
from nas.data import to_uint8
from nas.files import atomic_write, atomic_write_text, staged_folder

if TYPE_CHECKING:
    from nas.methods import Method
    from nas.pareto import ParetoFront

PROBE_COUNT = 4
PROBE_SIZE = 128
HEAT_MAX = 0.25  # |student - teacher| (in [0, 1] units) drawn at full heat; larger differences saturate


def save_png(image: torch.Tensor | np.ndarray, path: Path) -> None:
    array = to_uint8(image) if isinstance(image, torch.Tensor) else image
    if array.shape[-1] == 1:
        array = array[..., 0]
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def heat_map(student: torch.Tensor, teacher: torch.Tensor) -> np.ndarray:
    """|student - teacher| (mean over channels) in the 'inferno' colour map, H x W x 3 uint8."""
    from matplotlib import colormaps

    diff = ((student - teacher).abs() / 2).mean(0).clamp(0, HEAT_MAX) / HEAT_MAX
    return (colormaps["inferno"](diff.numpy())[..., :3] * 255).round().astype(np.uint8)


@dataclass
class Probes:
    """Fixed crops of the val split: the same for every candidate of a run, and for every resume of it."""

    inputs: list[torch.Tensor]
    targets: list[torch.Tensor] | None
    crops: list[dict[str, Any]]  # image name and box of each crop
    teacher_outputs: list[torch.Tensor] | None = None

    @classmethod
    def from_eval_set(cls, val: EvalSet, *, count: int = PROBE_COUNT, size: int = PROBE_SIZE,
                      multiple: int = 4) -> Probes:
        """``count`` crops of ``size`` (smaller where an image is; sides a multiple of ``multiple``), cycling over
        the split's images, at places drawn from a fixed seed."""
        rng = random.Random(0)
        inputs, targets, crops = [], [] if val.targets is not None else None, []
        for i in range(count):
            k = i % len(val)
            image = val.inputs[k]
            _, h, w = image.shape
            side = max(multiple, min(size, h, w) // multiple * multiple)
            if side > min(h, w):
                raise ValueError(f"val image {val.names[k]} ({h}x{w}) is smaller than the generators' multiple "
                                 f"({multiple})")
            top, left = rng.randint(0, h - side), rng.randint(0, w - side)
            inputs.append(image[:, top:top + side, left:left + side])
            if targets is not None:
                targets.append(val.targets[k][:, top:top + side, left:left + side])
            crops.append({"image": val.names[k], "top": top, "left": left, "size": side})
        return cls(inputs, targets, crops)

    @torch.no_grad()
    def outputs(self, module: torch.nn.Module) -> list[torch.Tensor]:
        module = module.to("cpu").eval()
        return [module(x[None])[0].clamp(-1, 1) for x in self.inputs]

    def write_reference(self, teacher: torch.nn.Module, folder: Path) -> None:
        """Input, target and teacher pictures and probes.json (the teacher's outputs are kept for the heat maps)."""
        self.teacher_outputs = self.outputs(teacher)
        crops = []
        for i, (x, t) in enumerate(zip(self.inputs, self.teacher_outputs)):
            save_png(x, folder / f"input_{i}.png")
            save_png(t, folder / f"teacher_{i}.png")
            crop = dict(self.crops[i])
            if self.targets is not None:
                save_png(self.targets[i], folder / f"target_{i}.png")
                crop.update(teacher_psnr=psnr(t, self.targets[i]), input_psnr=psnr(x, self.targets[i]))
            crops.append(crop)
        atomic_write_text(folder / "probes.json", json.dumps({"crops": crops, "heat_max": HEAT_MAX}, indent=2) + "\n")

    def write_student(self, module: torch.nn.Module, folder: Path, meta: dict[str, Any]) -> None:
        """One candidate's pictures and per-crop PSNRs, as a whole folder (never half of one)."""
        assert self.teacher_outputs is not None, "write_reference first"
        outputs = self.outputs(module)
        with staged_folder(folder) as stage:
            for i, (s, t) in enumerate(zip(outputs, self.teacher_outputs)):
                save_png(s, stage / f"student_{i}.png")
                save_png(heat_map(s, t), stage / f"diff_{i}.png")
            record = {**meta, "fidelity_psnr": [psnr(s, t) for s, t in zip(outputs, self.teacher_outputs)]}
            if self.targets is not None:
                record["psnr"] = [psnr(s, y) for s, y in zip(outputs, self.targets)]
            (stage / "probe.json").write_text(json.dumps(record, indent=2) + "\n")

    def update(self, method: Method, front: ParetoFront, folder: Path,
               weights: Any = None) -> int:
        """Pictures for the front's members that have none; members that left the front lose theirs.
        ``weights(row)`` gives a training trial's student file. Returns how many members were drawn."""
        root = folder / "trials"
        members = {str(r["trial_id"]): r for r in front.front_rows.to_dict("records")}
        drawn = 0
        for trial_id, row in members.items():
            if (root / trial_id / "probe.json").is_file():
                continue
            module = method.probe_student(row, weights(row) if weights and method.trains else None)
            if module is None:
                continue
            self.write_student(module, root / trial_id, {"trial_id": trial_id, "config": row["config"]})
            drawn += 1
        if root.is_dir():
            for stale in root.iterdir():
                if stale.is_dir() and stale.name not in members:
                    shutil.rmtree(stale, ignore_errors=True)
        return drawn
