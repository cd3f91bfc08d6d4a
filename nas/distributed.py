"""Data-parallel training on Ray Train: the one training loop (``nas.training``) over N workers.

One step means the same with any number of workers: the global batch is ``Task.batch(seed, step, B)``
as on one worker; rank r of N trains on slice r of it (B divisible by N); the learning rate does not
change with N; every rank draws the same subnet (the sandwich rule is a function of seed and step);
and before each optimizer step the gradients of that optimizer's parameters are averaged over the
ranks. So N workers compute what one worker computes, up to floating point, and a checkpoint written
with one worker count resumes with any other.

Why an all-reduce before each optimizer step rather than wrapping modules in
``DistributedDataParallel``: an objective calls its modules several times a step (the discriminator
on real and generated images, the distillation mappers outside any forward, a supernet whose active
subnet leaves parameters idle), which DDP's one-forward-one-backward reducer does not fit. The
average runs as one flat all-reduce per optimizer step (gloo on CPU, NCCL on GPU) inside the process
group that Ray Train's ``TorchTrainer`` sets up; parameters without a gradient (an idle branch, the
same on every rank) are skipped.

Rank 0 alone evaluates and writes checkpoints; it reports them through Ray Train (``--storage``:
a path every node sees, or a cloud URI), from which a restarted worker group resumes after a worker
failure, and sends each checkpoint and its progress to the driver, which writes ``--out`` in the
single-process format (atomically) and draws the progress bar.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nas.files import atomic_write
from spaces.errors import UserError

# Test hook: "RANK:STEP:MARKER" makes rank RANK exit abruptly after step STEP, once (the marker file
# records that it happened), so that the tests can check a restart from the last checkpoint.
KILL_HOOK = "NAS_TEST_KILL_WORKER"
MAX_FAILURES = 3


@dataclass(frozen=True)
class Workers:
    """Where data-parallel training runs: ``count`` workers of ``gpus`` GPUs each (0: CPU, gloo)."""

    count: int
    gpus: float = 0.0
    address: str | None = None
    storage: str | None = None


def check_workers(workers: Workers, batch_size: int) -> None:
    if workers.count < 1:
        raise UserError(f"--workers must be at least 1, got {workers.count}")
    if workers.gpus < 0:
        raise UserError(f"--gpus-per-worker must be at least 0, got {workers.gpus}")
    if batch_size % workers.count:
        raise UserError(f"--batch-size {batch_size} is not divisible by --workers {workers.count}: each worker trains "
                        f"on an equal slice of the global batch; use --batch-size "
                        f"{max(workers.count, batch_size - batch_size % workers.count)} or another worker count")


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the ranks (itself outside a process group): for statistics of the global
    batch computed from each rank's slice of equal size. No gradient flows through it."""
    _, size = world()
    if size == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / size


def _average_gradients(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def replicate(objective: Any) -> None:
    """Make the ranks' copies of ``objective`` one: rank 0's parameters everywhere, and gradients averaged
    before every optimizer step."""
    for optimizer in objective.optimizers():
        for group in optimizer.param_groups:
            for p in group["params"]:
                dist.broadcast(p.data, src=0)
        optimizer.register_step_pre_hook(_average_gradients)


def sync_batch_norm(module: torch.nn.Module) -> None:
    """On CUDA: plain batch norms of ``module`` become SyncBatchNorm (statistics of the global batch), in
    place, keeping their parameters (the optimizer's). The supernet's elastic batch norms stay per rank."""
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.BatchNorm2d:
            synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(child)
            setattr(module, name, synced)
        else:
            sync_batch_norm(child)


class _Progress:
    """What rank 0 tells the driver: steps done, the loss, the objective's shown fields."""

    def __init__(self, queue: Any, step: int) -> None:
        self.queue, self.n = queue, step

    def update(self, count: int) -> None:
        self.n += count

    def set_postfix(self, **fields: Any) -> None:
        self.queue.put(("progress", self.n, fields))


def _kill_if_asked(rank: int, step: int) -> None:
    hook = os.environ.get(KILL_HOOK)
    if not hook:
        return
    target, at, marker = hook.split(":", 2)
    if rank == int(target) and step == int(at) and not Path(marker).exists():
        Path(marker).write_text(f"rank {rank} killed after step {step}\n")
        os._exit(1)


def worker_loop(config: dict[str, Any]) -> None:
    """The loop of each Ray Train worker (``TorchTrainer``'s ``train_loop_per_worker``)."""
    import ray
    import ray.train
    import ray.train.torch

    from nas.checkpoint import read_training_record

    if Path(config["cwd"]).is_dir():  # relative paths (--space, --teacher, --task) mean what they meant to the driver
        os.chdir(config["cwd"])
    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    training = config["build"](device)
    training.shard = (rank, size)
    restart = ray.train.get_checkpoint()  # after a worker failure: the last one this run reported
    if restart is not None:
        with restart.as_directory() as folder:
            training.restore(read_training_record(Path(folder) / "checkpoint.pth"), source="the last checkpoint")
    elif config["resume"] is not None:
        training.restore(ray.get(config["resume"]), source=config["resume_source"])
    if device.type == "cuda":
        for module in vars(training.objective).values():
            if isinstance(module, torch.nn.Module):
                sync_batch_norm(module)
    replicate(training.objective)
    queue = config["queue"]

    def on_checkpoint(t: Any) -> None:
        metrics = {"step": t.step, "loss": t.loss}
        if rank == 0:
            record = t.record()
            with tempfile.TemporaryDirectory() as folder:
                torch.save(record, Path(folder) / "checkpoint.pth")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            queue.put(("checkpoint", t.step, ray.put(record)))
        else:
            ray.train.report(metrics)
        _kill_if_asked(rank, t.step)

    progress = _Progress(queue, training.step) if rank == 0 else None
    training.advance(config["until"], on_checkpoint=on_checkpoint, bar=progress, evaluate=rank == 0)


def _drain(queue: Any, out: Path, bar: Any, stop: threading.Event) -> None:
    """The driver's side: progress to the bar, checkpoints to ``out/checkpoint.pth`` (atomically)."""
    import ray
    from ray.util.queue import Empty

    while True:
        try:
            kind, step, payload = queue.get(timeout=0.5)
        except Empty:
            if stop.is_set():
                return
            continue
        if kind == "progress":
            bar.update(step - bar.n)
            bar.set_postfix(**payload)
            continue
        try:
            record = ray.get(payload, timeout=60)
        except Exception:  # noqa: BLE001 - the sender exited (the run's end): its last checkpoint is written after
            continue
        atomic_write(out / "checkpoint.pth", lambda tmp: torch.save(record, tmp))


def train_data_parallel(build: Callable[[torch.device], Any], workers: Workers, out: Path, *, until: int,
                        resume: dict[str, Any] | None, resume_source: str, label: str, total: int, initial: int,
                        progress: bool, name: str) -> Path:
    """Train ``build(device)`` (a ``Training``) up to step ``until`` on ``workers`` Ray Train workers;
    ``resume`` is the record to continue. Returns ``out/checkpoint.pth``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue
    from tqdm import tqdm

    from nas.ray_session import start_ray

    started_here = start_ray(workers.address)
    try:
        queue = Queue()
        storage = workers.storage or str((out / "ray").resolve())
        config = {"build": build, "until": until, "queue": queue, "resume_source": resume_source, "cwd": os.getcwd(),
                  "resume": ray.put(resume) if resume is not None else None}
        trainer = TorchTrainer(
            worker_loop, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers.count, use_gpu=workers.gpus > 0,
                                         resources_per_worker={"GPU": workers.gpus} if workers.gpus > 0 else
                                         {"CPU": 1}),
            run_config=RunConfig(name=name, storage_path=storage, failure_config=FailureConfig(max_failures=MAX_FAILURES),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)))
        bar = tqdm(initial=initial, total=total, desc=f"{label} x{workers.count}", disable=not progress,
                   dynamic_ncols=True)
        stop = threading.Event()
        drainer = threading.Thread(target=_drain, args=(queue, out, bar, stop), daemon=True)
        drainer.start()
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray Train wraps the workers' errors: one line says what failed
            raise UserError(f"data-parallel training failed (after up to {MAX_FAILURES} restarts): "
                            f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}") from None
        finally:
            stop.set()
            drainer.join()
            bar.close()
        if result.checkpoint is None:
            raise UserError("data-parallel training reported no checkpoint")
        with result.checkpoint.as_directory() as folder:  # the last one, also where the driver missed it
            record = torch.load(Path(folder) / "checkpoint.pth", map_location="cpu", weights_only=True)
        atomic_write(out / "checkpoint.pth", lambda tmp: torch.save(record, tmp))
    finally:
        if started_here:
            ray.shutdown()
    return out / "checkpoint.pth"
