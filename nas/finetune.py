"""GAN Compression's last step: an extracted subnet fine-tuned with its supernet's distillation loss,
through the one training loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.checkpoint import load_weights
from nas.data import Task
from nas.distill import DISTILL_WEIGHT, distill_loss, make_distiller
from nas.training import Objective, TrainSettings, Training, adam

# Fine-tuning an extracted subnet: the supernet's learning rate, which kept improving the student
# where 1e-4 had levelled off (bench/ofa_finetune.py, numbers in the README).
FINETUNE_LR = 4e-4


class FinetuneObjective(Objective):
    """L1 to the target (ground truth, or the teacher's output on unpaired data) plus feature
    distillation, starting from the supernet's mappers when given."""

    kind = "student"
    label = "fine-tune"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, lr: float, device: torch.device,
                 distill_weight: float = DISTILL_WEIGHT, distill_layers: int = 3,
                 mappers: dict[str, torch.Tensor] | None = None) -> None:
        self.student = student.to(device).train()
        self.multiple = getattr(student, "multiple", 4)
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.distill_weight, self.distill_layers = distill_weight, distill_layers
        self.distiller = make_distiller(self.student, self.teacher, layers=distill_layers, device=device)
        if mappers is not None:  # the supernet's mappers, cut to this subnet's widths (first-k, as its weights)
            own = self.distiller.mappers.state_dict()
            self.distiller.mappers.load_state_dict(
                {k: mappers[k][tuple(slice(0, n) for n in v.shape)] for k, v in own.items()})
        self.opt = adam(list(self.student.parameters()) + list(self.distiller.mappers.parameters()), lr, False)

    def identity(self) -> dict[str, Any]:
        return {"distill_weight": self.distill_weight, "distill_layers": self.distill_layers}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt]

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> float:
        with torch.no_grad():
            t_out = self.teacher(x)
        loss = distill_loss(self.student(x), y if y is not None else t_out, self.distiller, self.distill_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def evaluate(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "mappers": self.distiller.mappers.state_dict(),
                "optimizers": {"generator": self.opt.state_dict()}}

    def load_state(self, record: dict[str, Any]) -> None:
        load_weights(self.student, record["student"], source="", what="student")
        load_weights(self.distiller.mappers, record["mappers"], source="", what="distillation mappers")
        self.opt.load_state_dict(record["optimizers"]["generator"])

    def close(self) -> None:
        self.distiller.detach_hooks()


def finetune(student: nn.Module, teacher: nn.Module, task: Task, *, steps: int, batch_size: int = 16, crop: int = 64,
             lr: float = FINETUNE_LR, seed: int = 0, device: torch.device | str = "cpu",
             distill_weight: float = DISTILL_WEIGHT, distill_layers: int = 3,
             mappers: dict[str, torch.Tensor] | None = None, progress: bool = True) -> nn.Module:
    """Fine-tune an extracted subnet with the supernet's distillation loss (mappers inherited when given)."""
    from tqdm import tqdm

    device = torch.device(device)
    objective = FinetuneObjective(student, teacher, lr=lr, device=device, distill_weight=distill_weight,
                                  distill_layers=distill_layers, mappers=mappers)
    settings = TrainSettings(steps=steps, batch_size=batch_size, crop=crop, lr=lr, seed=seed, eval_every=steps,
                             checkpoint_every=steps)
    training = Training(objective, task, settings, device, task_spec=task.name)
    bar = tqdm(total=steps, desc="fine-tune", disable=not progress, dynamic_ncols=True)
    training.advance(steps, bar=bar, evaluate=False)
    bar.close()
    objective.close()
    return objective.student.eval()
