"""``nas.train ... --workers N``: the one training loop on N Ray Train workers (``TorchTrainer``).

Each worker builds the same run (a teacher's or supernet's ``Training``, or a method's student trial),
inside the process group Ray Train sets up, where the loop trains it data-parallel
(``nas.distributed``). Rank 0 alone evaluates, judges and writes checkpoints: it reports them through
Ray Train (``--storage``: a path every node sees, or a cloud URI), from which a restarted worker group
continues after a worker failure (``FailureConfig``), and sends their files and its progress to the
driver, which writes them under ``--out`` in the single-process layout (each file atomically) and draws
the progress bar. So a run started on N workers continues with ``--resume`` on any other number, or on
one process without Ray.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nas.files import atomic_write
from spaces.errors import UserError

# Test hook: "RANK:STEP:MARKER" makes rank RANK exit abruptly after step STEP, once (the marker file
# records that it happened), so that the tests can check a restart from the last checkpoint.
KILL_HOOK = "NAS_TEST_KILL_WORKER"
MAX_FAILURES = 3
CHECKPOINT = "checkpoint.pth"


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


def pack(folder: Path) -> dict[str, bytes]:
    """The files of a checkpoint folder, to travel to the driver or a worker on another node."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def unpack(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        atomic_write(folder / name, lambda tmp, data=data: Path(tmp).write_bytes(data))


# ------------------------------------------------------------------------------------------ workers


class _Progress:
    """What rank 0 tells the driver: steps done and the shown fields (a progress bar's interface)."""

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


def _enter(config: dict[str, Any]) -> tuple[int, Any]:
    """A worker's rank and device, in the driver's working directory."""
    import ray.train
    import ray.train.torch

    if Path(config["cwd"]).is_dir():  # relative paths (--space, --teacher, --task) mean what they meant to the driver
        os.chdir(config["cwd"])
    return ray.train.get_context().get_world_rank(), ray.train.torch.get_device()


@contextlib.contextmanager
def _starting_point(config: dict[str, Any]) -> Iterator[tuple[Path, str] | None]:
    """The checkpoint folder to continue from and what to call it: the last one this run reported (after a
    worker failure), else the ``--resume`` files, else None."""
    import ray
    import ray.train

    restart = ray.train.get_checkpoint()
    if restart is not None:
        with restart.as_directory() as folder:
            yield Path(folder), "the last checkpoint"
    elif config["resume"] is not None:
        with tempfile.TemporaryDirectory() as folder:
            unpack(ray.get(config["resume"]), Path(folder))
            yield Path(folder), config["resume_source"]
    else:
        yield None


def _report(rank: int, queue: Any, step: int, loss: float | None, save: Callable[[Path], None]) -> None:
    """Every rank reports each checkpoint step to Ray Train; rank 0 with the checkpoint, which also goes to
    the driver."""
    import ray
    import ray.train

    metrics = {"step": step, "loss": loss}
    if rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            save(Path(folder))
            files = pack(Path(folder))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        queue.put(("files", step, ray.put(files)))
    else:
        ray.train.report(metrics)
    _kill_if_asked(rank, step)


def model_loop(config: dict[str, Any]) -> None:
    """A worker of ``nas.train teacher|supernet``: ``config["build"](device)`` (a ``Training``) up to
    ``config["until"]``."""
    from nas.checkpoint import read_training_record

    rank, device = _enter(config)
    training = config["build"](device)
    with _starting_point(config) as start:
        if start is not None:
            training.restore(read_training_record(start[0] / CHECKPOINT), source=start[1])
    queue = config["queue"]

    def on_checkpoint(t: Any) -> None:
        _report(rank, queue, t.step, t.loss, lambda folder: t.save(folder / CHECKPOINT))

    training.advance(config["until"], on_checkpoint=on_checkpoint,
                     bar=_Progress(queue, training.step) if rank == 0 else None, evaluate=rank == 0)


def student_loop(config: dict[str, Any]) -> None:
    """A worker of ``nas.train student``: the method's trial, stepped (and checkpointed) until it ends or
    passes ``config["until"]``; rank 0 alone judges the trained student and sends the candidate's row."""
    from nas.methods import get_method
    from nas.methods.base import Candidate, Failed

    rank, device = _enter(config)
    method = get_method(config["method"], "student")(replace(config["context"], device=str(device)))
    method.load()
    trial = method.start(config["params"])
    with _starting_point(config) as start:
        if start is not None:
            trial.restore(start[0])
    queue, until = config["queue"], config["until"]
    while True:
        result = trial.step()
        if isinstance(result, Failed):  # every rank (the ranks' networks are one): rank 0 says why
            if rank == 0:
                queue.put(("failed", trial.steps_done, result.message))
            return
        if isinstance(result, Candidate):  # rank 0 alone gets here
            queue.put(("candidate", trial.steps_done, result.result()))
            return
        _report(rank, queue, result["step"], result["loss"], trial.save)
        if rank == 0:
            queue.put(("progress", result["step"], {"loss": f"{result['loss']:.4f}"}))
        if until and result["step"] >= until:
            if rank == 0:
                queue.put(("stopped", result["step"], result["step"]))
            return
        if rank != 0 and trial.steps_done >= trial.steps_total:
            return


# ------------------------------------------------------------------------------------------ driver


def _drain(queue: Any, folder: Path, bar: Any, ends: dict[str, Any], stop: threading.Event) -> None:
    """The driver's side: progress to the bar, checkpoint files to ``folder`` (each atomically), a trial's
    end into ``ends``."""
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
        elif kind == "files":
            try:
                files = ray.get(payload, timeout=60)
            except Exception:  # noqa: BLE001 - the sender exited (the run's end): its last checkpoint is written after
                continue
            unpack(files, folder)
        else:
            ends[kind] = payload


def fit(loop: Callable[[dict[str, Any]], None], config: dict[str, Any], workers: Workers, folder: Path, *,
        storage: Path, resume: tuple[dict[str, bytes], str] | None, label: str, total: int, initial: int,
        progress: bool, name: str) -> dict[str, Any]:
    """Run ``loop`` on ``workers`` with ``config`` (plus the queue, the working directory and ``resume``: the
    files of a checkpoint folder to continue, and what to call it); the reported checkpoints' files land in
    ``folder``. Returns how a trial ended (``candidate``: its row, ``failed``: why, ``stopped``: the step),
    empty for a model."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue
    from tqdm import tqdm

    from nas.ray_session import start_ray

    started_here = start_ray(workers.address)
    try:
        queue = Queue()
        config = {**config, "queue": queue, "cwd": os.getcwd(), "resume_source": resume[1] if resume else None,
                  "resume": ray.put(resume[0]) if resume is not None else None}
        trainer = TorchTrainer(
            loop, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers.count, use_gpu=workers.gpus > 0,
                                         resources_per_worker={"GPU": workers.gpus} if workers.gpus > 0 else
                                         {"CPU": 1}),
            run_config=RunConfig(name=name, storage_path=workers.storage or str(storage.resolve()),
                                 failure_config=FailureConfig(max_failures=MAX_FAILURES),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)))
        bar = tqdm(initial=initial, total=total, desc=f"{label} x{workers.count}", disable=not progress,
                   dynamic_ncols=True)
        ends: dict[str, Any] = {}
        stop = threading.Event()
        drainer = threading.Thread(target=_drain, args=(queue, folder, bar, ends, stop), daemon=True)
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
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as last:  # the last one, also where the driver missed it
                unpack(pack(Path(last)), folder)
        elif not ends:
            raise UserError("data-parallel training reported no checkpoint")
        return ends
    finally:
        if started_here:
            ray.shutdown()
