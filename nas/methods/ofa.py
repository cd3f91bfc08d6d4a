"""``ofa``: GAN Compression's once-for-all search. A supernet is trained once by distillation with the
sandwich rule (``SupernetObjective``, ``nas.train supernet``); a trial is one subnet, evaluated with
inherited weights; the best is fine-tuned with the supernet's distillation loss when exported."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from evaluators.quality import reference
from nas.checkpoint import load_supernet, load_weights, read_training_record
from nas.data import Task, load_task
from nas.discriminator import discriminator_from
from nas.distill import DISTILL_WEIGHT, distill_loss, make_distiller
from nas.methods.base import (Candidate, Categorical, Method, Param, SearchContext, Trial, check_range,
                              inherited_space_note)
from nas.training import (
    CALIBRATION_BATCHES,
    Objective,
    TrainSettings,
    adam,
    calibration_batches,
    optimize,
    with_gan,
)
from spaces.errors import UserError
from spaces.modules import Cost
from spaces.space import Choice, Config, SearchSpace
from spaces.supernet import Supernet, has_batch_norm

SANDWICH = ("max", "min", "random", "random")
SANDWICH_PHASES = ("max", "min", "random")


def sandwich_config(space: SearchSpace, seed: int, step: int, schedule: tuple[str, ...] = SANDWICH) -> Config:
    """The subnet of a step: ``schedule`` cycled over steps; by default the largest, the smallest,
    then two random subnets, in turn (the sandwich rule spread over steps). In an agd space the largest
    and smallest have every width at its extreme and each layer's operator sampled, so that every
    operator trains at both extremes."""
    phase = schedule[step % len(schedule)]
    rng = random.Random(seed * 7_919 + step)
    if phase == "random":
        return space.sample(rng)
    config = space.max_config() if phase == "max" else space.min_config()
    if space.family == "agd":  # widths at the extreme, operators sampled (skip, which has no width, too)
        for site in space.sites:
            if site.name.startswith("layer"):
                config[site.name] = _extreme_width(site.choices, rng.choice(sorted({_op(t) for t in site.choices})),
                                                   phase == "max")
    return config


def _op(token: Choice) -> str:
    return str(token).rstrip("0123456789")


def _extreme_width(tokens: tuple[Choice, ...], op: str, widest: bool) -> Choice:
    """``op``'s widest (or narrowest) token among ``tokens``."""
    mine = [t for t in tokens if _op(t) == op]
    return (max if widest else min)(mine, key=lambda t: int(str(t)[len(op):] or 0))


def parse_sandwich(text: str) -> tuple[str, ...]:
    phases = tuple(p.strip() for p in text.split(","))
    wrong = [p for p in phases if p not in SANDWICH_PHASES]
    if wrong:
        raise UserError(f"--sandwich {text!r}: {', '.join(map(repr, wrong))} is not a phase; give a "
                        f"comma-separated cycle of {', '.join(SANDWICH_PHASES)} (default {','.join(SANDWICH)})")
    return phases


class SupernetObjective(Objective):
    """The supernet's loss: one sandwich subnet per step, L1 to the target (ground truth, or the
    teacher's output on unpaired data) plus feature distillation (+ LSGAN when asked)."""

    kind = "supernet"

    def __init__(self, space: SearchSpace, teacher: torch.nn.Module, task: Task, settings: TrainSettings,
                 device: torch.device, *, space_arg: str, teacher_path: str, distill_weight: float = DISTILL_WEIGHT,
                 distill_layers: int = 3, sandwich: str = ",".join(SANDWICH),
                 discriminator: str | None = None) -> None:
        self.space, self.task, self.settings, self.device = space, task, settings, device
        self.schedule = parse_sandwich(sandwich)
        self.label = f"supernet {space.name}"
        self._identity = {"space": space_arg, "teacher": teacher_path, "method": "ofa",
                          "distill_weight": distill_weight, "distill_layers": distill_layers,
                          "sandwich": ",".join(self.schedule), "discriminator": discriminator}
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        torch.manual_seed(settings.seed)
        self.supernet = Supernet(space).to(device).train()
        self.multiple = space.multiple
        self.distiller = make_distiller(self.supernet.net, self.teacher, layers=distill_layers, device=device)
        self.distill_weight = distill_weight
        self.opt_g = adam(list(self.supernet.parameters()) + list(self.distiller.mappers.parameters()), settings.lr,
                          settings.gan_weight > 0)
        self.disc = self.opt_d = None
        if settings.gan_weight > 0:
            self.disc = discriminator_from(discriminator or teacher_path, space.spec.out_channels,
                                           ndf=settings.ndf).to(device)
            self.opt_d = adam(self.disc.parameters(), settings.lr, True)
        self.val = task.eval_set("val")
        self.val_reference = reference(self.teacher, self.val, device)
        self.calibration = (calibration_batches(task, crop=settings.crop, device=device, seed=settings.seed)
                            if has_batch_norm(self.supernet) else None)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.opt_g, self.opt_d) if o is not None]

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> float:
        self.supernet.set_active(sandwich_config(self.space, self.settings.seed, step, self.schedule))
        with torch.no_grad():
            t_out = self.teacher(x)
        out = self.supernet(x)
        target = y if y is not None else t_out
        loss = with_gan(distill_loss(out, target, self.distiller, self.distill_weight), self.disc, out,
                        self.settings.gan_weight)
        optimize(loss, self.opt_g, self.disc, self.opt_d, target, out)
        return float(loss.detach())

    def evaluate(self) -> dict[str, Any]:
        from evaluators.quality import evaluate_on

        metrics = {}
        for name, config in (("max", self.space.max_config()), ("min", self.space.min_config())):
            self.supernet.set_active(config)
            model = self.supernet if self.calibration is None else self.supernet.extract(calibration=self.calibration)
            metrics[f"val_{name}"] = evaluate_on(model, self.val, self.val_reference, device=self.device).as_dict()
        return metrics

    def shown(self, metrics: dict[str, Any]) -> dict[str, str]:
        best = metrics.get("val_max", {})
        return {"max_psnr": f"{best.get('psnr') or best.get('fidelity_psnr') or 0:.2f}"}

    def state(self) -> dict[str, Any]:
        return {
            "method": "ofa", "teacher": self._identity["teacher"], "space_name": self.space.name,
            "space_yaml": self.space.spec_text,
            "supernet": {k: v.detach().cpu() for k, v in self.supernet.net.state_dict().items()},
            "mappers": self.distiller.mappers.state_dict(),
            "discriminator": self.disc.state_dict() if self.disc is not None else None,
            "optimizers": {"generator": self.opt_g.state_dict(),
                           **({"discriminator": self.opt_d.state_dict()} if self.disc is not None else {})},
        }

    def load_state(self, record: dict[str, Any]) -> None:
        load_weights(self.supernet.net, record["supernet"], source="", what="supernet")
        load_weights(self.distiller.mappers, record["mappers"], source="", what="distillation mappers")
        self.opt_g.load_state_dict(record["optimizers"]["generator"])
        if self.disc is not None:
            load_weights(self.disc, record["discriminator"], source="", what="discriminator")
            self.opt_d.load_state_dict(record["optimizers"]["discriminator"])

    def close(self) -> None:
        self.distiller.detach_hooks()


# Distillation steps for the exported best student (GAN Compression's fine-tune), chosen by measurement
# on the shipped supernets (bench/ofa_finetune.py, README): over six subnets of both families, 800 steps
# add 4.3 points of share on val on average (300: 1.0, 500: 2.7), and the default search stays under
# 5 minutes on 2 CPU cores. A fine-tune that loses val quality is not exported (nas.search keeps the
# inherited weights).
FINETUNE_STEPS = 800


@dataclass(frozen=True)
class OfaOptions:
    supernet: str | None = field(default=None, metadata={"path": True,
        "help": "supernet checkpoint (nas.train supernet; default: the shipped one for --space)"})
    finetune_steps: int = field(default=FINETUNE_STEPS, metadata={
        "help": "distillation steps for the exported best student (0: inherited weights as they are)"})

    def __post_init__(self) -> None:
        check_range(self, "finetune_steps", 0, None)


def supernet_calibration(supernet: Supernet, record: dict[str, Any], task: str | None,
                         device: torch.device | str) -> list[torch.Tensor] | None:
    """The batches an extracted subnet's batch norms are recalibrated on (crops of the supernet's
    training size from ``task``, default the one it trained on); None for a supernet without batch norm."""
    if not has_batch_norm(supernet):
        return None
    crop = int(record.get("args", {}).get("crop", max(64, supernet.space.multiple)))
    return calibration_batches(load_task(task or record["task"]), crop=crop, device=device)


class OfaTrial(Trial):
    """One subnet of the supernet, judged with inherited weights: a single cheap step."""

    def __init__(self, method: OfaMethod, config: Config) -> None:
        self.method, self.config = method, config

    def step(self) -> Candidate:
        method = self.method
        student = method.supernet.extract(self.config, calibration=method.calibration)
        quality = method.judge(student)
        return Candidate(config=method.space.encode(self.config), cost=method.space.cost(self.config),
                         quality=quality, latency_ms=method.latency(student))


class OfaMethod(Method):
    """Subnets of a once-for-all supernet, evaluated with inherited weights on the val split."""

    name = "ofa"
    Options = OfaOptions

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        path = self.options.supernet
        if not path:
            raise UserError("--method ofa needs a trained supernet (--supernet CKPT, from nas.train supernet)")
        if not Path(path).exists():
            raise UserError(f"--supernet {path} not found")
        read_training_record(path, kind="supernet")  # says what the file is when it is not one
        # loaded once here, where a damaged file is one line, rather than in every trial
        self._space = load_supernet(path)[0].space
        self.supernet = None
        self.calibration: list[torch.Tensor] | None = None

    @classmethod
    def fill_defaults(cls, options: OfaOptions, task: str, space: str, shipped: dict[str, Any] | None,
                      weights_dir: Path) -> OfaOptions:
        if options.supernet:
            return options
        if shipped is None:
            raise UserError(f"--supernet is required for --task {task} (the shipped supernets are for sr4x)")
        key = f"supernet_{Path(space).stem}"
        if key not in shipped:
            names = sorted(k.removeprefix("supernet_") for k in shipped if k.startswith("supernet_"))
            raise UserError(f"no shipped supernet for space {space!r} (shipped: {', '.join(names)}); train one "
                            f"with `python -m nas.train supernet --space {space} ...` and pass --supernet")
        return replace(options, supernet=str(weights_dir / shipped[key]["file"]))

    @property
    def space(self) -> SearchSpace:
        return self._space

    def notes(self) -> list[str]:
        notes = inherited_space_note(self._space, self.options.supernet, self.context)
        if self._space.spec.norm != "batch":
            return notes
        return notes + [f"batch norm: each subnet's running statistics are recalibrated on {CALIBRATION_BATCHES} batches of "
                "training crops before it is judged or exported (as once-for-all does); the supernet's shared "
                "statistics fit no subnet in particular"]

    def parameters(self) -> dict[str, Param]:
        return {site.name: Categorical(site.choices) for site in self._space.sites}

    def bound(self, params: dict[str, Any]) -> Cost:
        return self._space.cost(self._space.validate(params))

    def describe(self, params: dict[str, Any]) -> str:
        return self._space.encode(params)

    def repair(self, params: dict[str, Any], budget: int, rng: random.Random) -> dict[str, Any]:
        """Shrink random sites one choice at a time until the subnet fits ``budget``. Every site keeps
        the sampler's choice or a smaller one; the result is told to the sampler as it is."""
        space, convention = self._space, self.context.macs_convention
        config = space.validate(params)
        order = {site.name: sorted(site.choices, key=SearchSpace._order_key) for site in space.sites}
        while getattr(space.cost(config), convention) > budget:
            shrinkable = [name for name, choices in order.items() if choices.index(config[name]) > 0]
            if not shrinkable:
                return space.min_config()
            name = rng.choice(shrinkable)
            config[name] = order[name][order[name].index(config[name]) - 1]
        return config

    def load(self) -> None:
        super().load()
        self.supernet, record = load_supernet(self.options.supernet)
        self.supernet.to(self.context.device)
        self.calibration = supernet_calibration(self.supernet, record, self.context.task, self.context.device)

    def start(self, params: dict[str, Any]) -> OfaTrial:
        if self.supernet is None:
            self.load()
        return OfaTrial(self, self._space.validate(params))

    def probe_student(self, row: dict[str, Any], weights: Path | None) -> torch.nn.Module:
        """The subnet with inherited weights, as its trial judged it (batch norms recalibrated)."""
        if self.supernet is None:  # on the driver: the supernet on the CPU, without the val split
            self.supernet, record = load_supernet(self.options.supernet)
            self.calibration = supernet_calibration(self.supernet, record, self.context.task, "cpu")
        return self.supernet.extract(self._space.decode(row["config"]), calibration=self.calibration)

    def export(self, row: dict[str, Any], weights: Path | None, out: Path, *, device: str = "cpu",
               progress: bool = False) -> dict[str, Any]:
        from nas.export import export_subnet

        # A subnet's weights are the supernet's: the candidate's config is all it takes.
        def export(steps: int) -> dict[str, Any]:
            return export_subnet(self.options.supernet, self._space.decode(row["config"]), out, finetune_steps=steps,
                                 task=self.context.task, teacher=self.context.teacher, seed=self.context.seed,
                                 device=device, progress=progress)

        report = export(self.options.finetune_steps)
        if self.options.finetune_steps and hasattr(self, "reference"):
            from nas.checkpoint import load_generator

            tuned = self.judge(load_generator(out / "model.pth").module)
            if tuned.worse_than(float(row["quality"])):  # the fine-tune lost val quality: keep the inherited weights
                report = {**export(0), "finetune_steps": self.options.finetune_steps, "kept": "inherited",
                          "finetuned_val": {"quality": tuned.score, "share": tuned.share, **(
                              {"fid_images": tuned.fid_images, "fid_real_images": tuned.fid_real_images}
                              if tuned.fid_images is not None else {})}}
        return report
