"""The GPU path, checked in one go: training with and without bfloat16 AMP, a CUDA checkpoint read on the
CPU, ``--resume`` on CUDA, one kd trial, the export, and latencies of student and teacher.

    python3 bench/gpu_check.py --device cuda --out runs/gpu-check

It runs with a bare ``python3`` that has torch, numpy, pandas, scikit-image, scikit-learn, matplotlib,
PyYAML, tqdm, torchmetrics, onnx and onnxruntime (a GPU image's usual set), from a checkout without an
install: the project's modules on these paths import none of Ray, Optuna, fvcore, torchprofile and plotly
at module level. The one more thing they need is jsonschema (space files are validated), whose small
wheels are listed in ``WHEELS``; ``make gpu-check-wheels`` downloads them into ``.whl/`` for a machine
without network, where ``pip install --no-index --target DIR .whl/*.whl`` and ``PYTHONPATH=DIR`` bring them.

Every step runs in its own process under its own timeout; a step that fails or times out is recorded
and the next one runs. ``OUT/report.json`` is rewritten (atomically) after every step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nas.cli import Parser, at_least, run  # noqa: E402
from nas.files import check_output_folder  # noqa: E402

WHEELS = ("jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "rpds-py==2026.9.1")
NOT_NEEDED = ("ray", "optuna", "fvcore", "torchprofile", "plotly")  # must not be imported on these paths

TEACHER_SPACE = "spaces/sr4x/teacher.yaml"  # the shipped teacher's space (max config: 5.3G MACs at 256x256)
SHIPPED_TEACHER = "weights/sr4x/teacher.pth"
SUPERNET_SPACE = "resnet"

# A CUDA checkpoint read on the CPU, the same whole image through both. Convolutions run in TF32 on CUDA by
# default (10-bit mantissa: about 5e-4 relative per product); through the ~20 layers of a generator that
# stays well under one 8-bit grey level (2/255 = 7.8e-3 in the [-1, 1] range). With TF32 off, only the
# order of float32 sums differs.
PORTABILITY_TOLERANCE = {"tf32": 7.8e-3, "fp32": 1e-4, "same_device": 0.0}
# --resume against an uninterrupted run, as the relative L2 distance of all generator weights after the
# resumed steps. On the CPU the run is bit-exact. On CUDA the reflection padding's backward has no
# deterministic kernel (atomic adds), so two uninterrupted runs already differ; a resume must not add more
# than a few times that, and never more than RESUME_CUDA_CEILING.
RESUME_CUDA_FACTOR = 5.0
RESUME_CUDA_CEILING = 1e-2


def portability_tolerance(device: torch.device, tf32: bool) -> float:
    """Largest |CPU - device| output difference allowed for the same weights on the same image."""
    if device.type == "cpu":
        return PORTABILITY_TOLERANCE["same_device"]
    return PORTABILITY_TOLERANCE["tf32" if tf32 else "fp32"]


def resume_tolerance(device: torch.device, baseline: float) -> float:
    """Largest relative weight distance of a resumed run from an uninterrupted one, given the distance
    ``baseline`` between two uninterrupted runs."""
    if device.type == "cpu":
        return 0.0
    return min(RESUME_CUDA_CEILING, max(RESUME_CUDA_FACTOR * baseline, 1e-6))


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for convolutions and matrix products on or off inside the block."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclass(frozen=True)
class CheckSettings:
    device: str = "cuda"
    out: str = "runs/gpu-check"
    steps: int = 200  # training steps of each timed run
    warmup: int = 20  # steps before timing starts (the run stops there and resumes)
    batch_size: int = 16
    crop: int = 64
    cpu_steps: int = 10  # the same training on that machine's CPU, for scale
    resume_steps: int = 50
    resume_stop: int = 20
    large_batch: int = 64  # a heavier training step, where the GPU rather than kernel launches sets the pace
    large_crop: int = 160  # (the largest multiple of 32 that every sr4x training photo holds)
    large_steps: int = 60
    kd_steps: int = 300  # the kd default (200 steps leave a from-scratch student at bicubic's quality)
    kd_budget: str = "0.5G"  # about 1/10 of the shipped teacher's 5.3G
    sizes: str = "256,1024"
    batches: str = "1,16"
    repeats: int = 10
    teacher_space: str = TEACHER_SPACE
    teacher_config: str = "max"

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def path(self, *parts: str) -> Path:
        return Path(self.out).joinpath(*parts)


# ------------------------------------------------------------------------------------------------ helpers


def train(argv: list[str]) -> None:
    """``python -m nas.train ARGV`` in this process; a non-zero exit becomes an exception."""
    from nas.train import main
    from spaces.errors import UserError

    try:
        code = main(argv)
    except UserError as exc:
        raise RuntimeError(f"nas.train {' '.join(argv)}: {exc}") from None
    if code:
        raise RuntimeError(f"nas.train {' '.join(argv)} exited with {code}")


def schedule(s: CheckSettings, steps: int) -> list[str]:
    return ["--steps", str(steps), "--batch-size", str(s.batch_size), "--crop", str(s.crop), "--no-progress",
            "--checkpoint-every", str(steps), "--eval-every", str(steps)]


def record_of(checkpoint: Path) -> dict[str, Any]:
    from nas.checkpoint import read_training_record

    return read_training_record(checkpoint)


def val_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The validation figures a training run recorded at its last evaluation."""
    flat: dict[str, float] = {}
    for key, value in (record.get("metrics") or {}).items():
        inner = value if isinstance(value, dict) else {"": value}
        flat.update({f"{key}_{k}".rstrip("_"): round(v, 4) for k, v in inner.items()
                     if key != "step" and isinstance(v, (int, float))})
    return flat


def timed_run(s: CheckSettings, what: str, out: Path, extra: list[str], device: str) -> dict[str, Any]:
    """A training run stopped after the warm-up and resumed to the end; steps/s over the resumed part."""
    base = [what, "--out", str(out), "--device", device, *extra, *schedule(s, s.steps)]
    warmup = min(s.warmup, s.steps - 1)
    train([*base, "--stop-at", str(warmup)])
    before = record_of(out / "checkpoint.pth")["train_seconds"]
    train([*base, "--resume"])
    record = record_of(out / "checkpoint.pth")
    seconds = record["train_seconds"] - before
    return {"steps": record["step"], "timed_steps": record["step"] - warmup, "seconds": round(seconds, 3),
            "steps_per_s": round((record["step"] - warmup) / seconds, 3), "val": val_metrics(record),
            "images_per_s": round((record["step"] - warmup) * s.batch_size / seconds, 1)}


def generator_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from nas.checkpoint import load_generator

    return {k: v.float() for k, v in load_generator(checkpoint).module.state_dict().items() if v.is_floating_point()}


def needs(path: Path, step: str) -> Path:
    """``path``, which step ``step`` writes; a clear error when it did not."""
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: this step needs step {step}'s output (did it fail?)")
    return path


def tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    den = sum(float(a[k].pow(2).sum()) for k in a)
    return math.sqrt(num / den)


# -------------------------------------------------------------------------------------------------- steps


def installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a finder that refuses it
        return False


def step_environment(s: CheckSettings) -> dict[str, Any]:
    device = s.torch_device
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "packages": {name: installed(name)
                     for name in (*NOT_NEEDED, "jsonschema", "onnx", "onnxruntime", "skimage", "torchmetrics")},
    }
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    bf16_supported=torch.cuda.is_bf16_supported())
    else:
        info.update(device_name=platform.processor() or platform.machine())
    return info


def step_photos(s: CheckSettings) -> dict[str, Any]:
    """The embedded sr4x task is built from photos that scikit-image, scikit-learn and matplotlib ship."""
    import skimage

    from nas.data import load_task

    began = time.perf_counter()
    task = load_task("sr4x")
    return {"scikit_image": skimage.__version__, "seconds": round(time.perf_counter() - began, 2),
            **{split: {name: list(x.shape[1:]) for name, x in zip(task.split(split).names, task.split(split).inputs)}
               for split in ("train", "val", "test")}}


def step_train(s: CheckSettings) -> dict[str, Any]:
    """Teacher and supernet, with and without --amp, on the device; the teacher briefly on the CPU."""
    teacher = ["--space", s.teacher_space, "--config", s.teacher_config]
    supernet = ["--space", SUPERNET_SPACE, "--teacher", str(ROOT / SHIPPED_TEACHER)]
    result: dict[str, Any] = {}
    for what, extra in (("teacher", teacher), ("supernet", supernet)):
        for amp in (False, True):
            name = f"{what}_{'amp_bf16' if amp else 'fp32'}"
            result[name] = timed_run(s, what, s.path("train", name), extra + (["--amp"] if amp else []), s.device)
        result[f"{what}_amp_speedup"] = round(result[f"{what}_amp_bf16"]["steps_per_s"]
                                              / result[f"{what}_fp32"]["steps_per_s"], 2)
    large = CheckSettings(**{**asdict(s), "steps": s.large_steps, "batch_size": s.large_batch, "crop": s.large_crop,
                             "warmup": min(s.warmup, s.large_steps - 1)})
    for amp in (False, True):
        name = f"teacher_large_{'amp_bf16' if amp else 'fp32'}"
        result[name] = timed_run(large, "teacher", s.path("train", name), teacher + (["--amp"] if amp else []), s.device)
    result["teacher_large_amp_speedup"] = round(result["teacher_large_amp_bf16"]["steps_per_s"]
                                                / result["teacher_large_fp32"]["steps_per_s"], 2)
    out = s.path("train", "teacher_cpu")
    cpu = CheckSettings(**{**asdict(s), "steps": s.cpu_steps, "warmup": min(2, s.cpu_steps - 1)})
    result["teacher_cpu"] = {**timed_run(cpu, "teacher", out, teacher, "cpu"), "threads": torch.get_num_threads()}
    if s.torch_device.type == "cuda":
        result["teacher_gpu_over_cpu"] = round(result["teacher_fp32"]["steps_per_s"]
                                               / result["teacher_cpu"]["steps_per_s"], 1)
    return result


def same_image(module: torch.nn.Module, image: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """|CPU - device| output of one module on one image, TF32 on and off; each against its tolerance."""
    checks = {}
    with torch.no_grad():
        cpu_out = module.cpu().eval()(image)
        module = module.to(device)
        for mode in ((True, False) if device.type == "cuda" else (False,)):
            with tf32(mode):
                diff = (module(image.to(device)).cpu() - cpu_out).abs()
            tolerance = portability_tolerance(device, mode)
            checks["tf32" if mode else "fp32"] = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                                                  "tolerance": tolerance, "ok": float(diff.max()) <= tolerance}
    return checks


def step_portability(s: CheckSettings) -> dict[str, Any]:
    """The teacher trained on the device loads on the CPU (map_location) and gives the same image there;
    the tolerance is also checked on the shipped teacher, whose output differs far more from its input
    than a 200-step run's (so rounding has something to act on)."""
    from nas.checkpoint import load_generator
    from nas.data import load_task

    checkpoint = needs(s.path("train", "teacher_fp32", "checkpoint.pth"), "train")
    # as written: the optimizer's state stays where training ran; safe_load maps it all to the CPU
    raw = torch.load(checkpoint, map_location=None if s.torch_device.type == "cuda" else "cpu", weights_only=True)
    image = load_task("sr4x").val.inputs[0].unsqueeze(0)
    result: dict[str, Any] = {"stored_on": sorted({t.device.type for t in tensors(raw)}), "image": list(image.shape[1:]),
                              "trained_here": same_image(load_generator(checkpoint).module, image, s.torch_device),
                              "shipped_teacher": same_image(load_generator(ROOT / SHIPPED_TEACHER).module, image,
                                                            s.torch_device)}
    failed = [f"{model} ({mode})" for model in ("trained_here", "shipped_teacher")
              for mode, check in result[model].items() if not check["ok"]]
    if failed:
        raise AssertionError(f"CPU and {s.device} outputs differ beyond tolerance: {', '.join(failed)}: {result}")
    return result


def step_resume(s: CheckSettings) -> dict[str, Any]:
    """Two uninterrupted teacher runs and one stopped and resumed: the weights after the last step."""
    base = ["--space", s.teacher_space, "--config", s.teacher_config, "--device", s.device,
            *schedule(s, s.resume_steps)]
    runs = {}
    for name in ("uninterrupted", "uninterrupted_again"):
        train(["teacher", "--out", str(s.path("resume", name)), *base])
        runs[name] = generator_weights(s.path("resume", name, "checkpoint.pth"))
    resumed = s.path("resume", "resumed")
    train(["teacher", "--out", str(resumed), *base, "--stop-at", str(s.resume_stop)])
    train(["teacher", "--out", str(resumed), *base, "--resume"])
    runs["resumed"] = generator_weights(resumed / "checkpoint.pth")
    baseline = relative_distance(runs["uninterrupted"], runs["uninterrupted_again"])
    distance = relative_distance(runs["uninterrupted"], runs["resumed"])
    tolerance = resume_tolerance(s.torch_device, baseline)
    result = {"steps": s.resume_steps, "stopped_at": s.resume_stop, "relative_distance_resumed": distance,
              "relative_distance_two_uninterrupted": baseline, "tolerance": tolerance, "ok": distance <= tolerance,
              "val": {name: val_metrics(record_of(s.path("resume", name, "checkpoint.pth")))
                           for name in ("uninterrupted", "uninterrupted_again", "resumed")}}
    if not result["ok"]:
        raise AssertionError(f"the resumed run is {distance:.3g} from the uninterrupted one (tolerance {tolerance:.3g})")
    return result


def step_kd_trial(s: CheckSettings) -> dict[str, Any]:
    """One kd trial through the project's trial code (``nas.train student``, no Ray), exported on the CPU."""
    out = s.path("kd")
    began = time.perf_counter()
    train(["student", "--method", "kd", "--budget", s.kd_budget, "--device", s.device, "--out", str(out),
           "--steps", str(s.kd_steps), "--batch-size", str(s.batch_size), "--crop", str(s.crop), "--no-progress"])
    row = json.loads((out / "candidate.json").read_text())
    export = json.loads((out / "student" / "export.json").read_text())
    return {"seconds": round(time.perf_counter() - began, 1), "architecture": row["architecture"],
            "macs": row["macs_torchprofile"], "val_psnr": row["psnr"], "share": row.get("share"),
            "export_max_abs_diff": export["max_abs_diff"], "export_tolerance": export["tolerance"],
            "ray_search": "not run: this check runs without Ray (the GPU image has none, and Ray's wheel alone is "
                          "larger than the 64 MiB a check may carry); --gpus-per-trial is exercised only where "
                          "Ray is installed"}


def fallback_student(s: CheckSettings) -> Path:
    """A subnet of step train's supernet at about the kd budget, exported (when the kd trial failed)."""
    from evaluators.macs import parse_macs
    from nas.checkpoint import load_supernet
    from nas.export import export_subnet
    from nas.methods.kd import kd_student

    supernet_path = needs(s.path("train", "supernet_fp32", "checkpoint.pth"), "train")
    supernet, _ = load_supernet(supernet_path)
    _, config = kd_student(supernet.space, parse_macs(s.kd_budget))
    out = s.path("subnet")
    export_subnet(supernet_path, config, out, progress=False)
    return out


def step_latency(s: CheckSettings) -> dict[str, Any]:
    """Student and teacher on the device, eager and TorchScript, per batch and image size."""
    from evaluators.latency import latencies
    from nas.checkpoint import load_generator

    folder = s.path("kd", "student")
    source = "kd trial"
    if not (folder / "model.ts").is_file():
        folder, source = fallback_student(s), "supernet subnet"
    device = s.torch_device
    student = load_generator(folder / "model.pth")
    teacher = load_generator(ROOT / SHIPPED_TEACHER)
    channels = teacher.space.spec.in_channels
    models = {"teacher_eager": teacher.module.to(device).eval(), "student_eager": student.module.to(device).eval(),
              "student_torchscript": torch.jit.load(str(folder / "model.ts"), map_location=device).eval()}
    with torch.no_grad():
        example = torch.zeros(1, channels, 64, 64, device=device)
        models["teacher_torchscript"] = torch.jit.trace(models["teacher_eager"], example)
    result: dict[str, Any] = {"student": source, "student_macs": student.space.cost(student.config).torchprofile,
                              "teacher_macs": teacher.space.cost(teacher.config).torchprofile, "ms": {}}
    for size in (int(v) for v in s.sizes.split(",")):
        for batch in (int(v) for v in s.batches.split(",")):
            key = f"{batch}x{size}x{size}"
            try:
                seconds = latencies(models, channels=channels, size=size, repeats=s.repeats, device=device, batch=batch)
                result["ms"][key] = {name: round(1e3 * t, 3) for name, t in seconds.items()}
                result["ms"][key]["speedup_eager"] = round(seconds["teacher_eager"] / seconds["student_eager"], 2)
            except torch.OutOfMemoryError as exc:
                result["ms"][key] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return result


STEPS: dict[str, tuple[Callable[[CheckSettings], dict[str, Any]], int]] = {
    # name: (function, timeout in seconds on the GPU; together well under 5 minutes there)
    "environment": (step_environment, 60),
    "photos": (step_photos, 60),
    "train": (step_train, 240),
    "portability": (step_portability, 60),
    "resume": (step_resume, 120),
    "kd_trial": (step_kd_trial, 180),
    "latency": (step_latency, 180),
}


# --------------------------------------------------------------------------------------------------- runner


def write_report(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_step(name: str, s: CheckSettings) -> None:
    """Inside the step's own process: run it and write OUT/steps/NAME.json."""
    began = time.perf_counter()
    try:
        entry = {"status": "ok", "result": STEPS[name][0](s)}
    except Exception as exc:  # recorded for the report; the runner goes on with the next step
        entry = {"status": "failed", "error": f"{exc.__class__.__name__}: {exc}",
                 "traceback": traceback.format_exc(limit=-4)}
    entry["seconds"] = round(time.perf_counter() - began, 2)
    write_report(s.path("steps", f"{name}.json"), entry)


def run_all(s: CheckSettings, names: list[str], argv: list[str], timeout_scale: float) -> dict[str, Any]:
    s.path("steps").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "settings": asdict(s), "steps": {}}
    report_path = s.path("report.json")
    for name in names:
        timeout = STEPS[name][1] * timeout_scale
        step_file = s.path("steps", f"{name}.json")
        step_file.unlink(missing_ok=True)
        began = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.run([sys.executable, __file__, *argv, "--run-step", name], env=env, timeout=timeout,
                                  capture_output=True, text=True)
            tail = (proc.stdout + proc.stderr)[-2000:]
            if step_file.is_file():
                entry = json.loads(step_file.read_text())
            else:
                entry = {"status": "failed", "error": f"the step's process exited with {proc.returncode}",
                         "output": tail}
        except subprocess.TimeoutExpired:
            entry = {"status": "timeout", "error": f"no result within {timeout:.0f} s"}
        entry["wall_seconds"] = round(time.perf_counter() - began, 1)
        report["steps"][name] = entry
        write_report(report_path, report)
        print(f"{name:12s} {entry['status']:8s} {entry['wall_seconds']:7.1f} s"
              + (f"  {entry['error']}" if entry["status"] != "ok" else ""), flush=True)
    report["ok"] = all(e["status"] == "ok" for e in report["steps"].values())
    write_report(report_path, report)
    return report


def build_parser() -> Parser:
    p = Parser(prog="bench/gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(CheckSettings):
        # counts are at least 1 (resume_stop and warmup: 0 allowed)
        kind = at_least(0 if f.name in ("warmup", "resume_stop") else 1) if type(f.default) is int else type(f.default)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    p.add_argument("--only", help=f"comma-separated steps (default all: {','.join(STEPS)})")
    p.add_argument("--timeout-scale", type=at_least(1e-6, float), default=1.0,
                   help="multiply every step's timeout (slow machines)")
    p.add_argument("--run-step", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    s = CheckSettings(**{f.name: getattr(args, f.name) for f in fields(CheckSettings)})
    check_output_folder(s.out, "--out")
    if args.run_step:
        run_step(args.run_step, s)
        return 0
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but this machine has no CUDA device; use --device cpu for a rehearsal",
              file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else list(STEPS)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        print(f"error: unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}", file=sys.stderr)
        return 2
    report = run_all(s, names, [a for a in argv if a != "--run-step"], args.timeout_scale)
    print(f"report: {s.path('report.json')}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    run(main)
