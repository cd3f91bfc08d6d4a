"""bench/gpu_check.py: its rehearsal on the CPU (without Ray, Optuna, fvcore, torchprofile and plotly
importable), the failure paths of its runner, and what its CUDA-only branches choose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bench.gpu_check import (PORTABILITY_TOLERANCE, RESUME_CUDA_CEILING, portability_tolerance, resume_tolerance,
                             tf32)
from nas.checkpoint import safe_load
from nas.training import autocast

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
BLOCKER = """
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"ray", "optuna", "fvcore", "torchprofile", "plotly"}:
            raise ImportError(f"{name} is blocked in this test: the GPU machine has no such package")
sys.meta_path.insert(0, _Blocked())
"""
REHEARSAL = ["--device", "cpu", "--steps", "4", "--warmup", "2", "--batch-size", "2", "--crop", "32",
             "--cpu-steps", "3", "--large-batch", "2", "--large-crop", "32", "--large-steps", "3", "--resume-steps", "4", "--resume-stop", "2", "--kd-steps", "3", "--sizes", "64",
             "--batches", "1,2", "--repeats", "2", "--teacher-space", "resnet", "--teacher-config", "min"]


def run_check(tmp_path: Path, *args: str, **env_extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The script in a fresh process whose every child (each step) refuses the blocked packages."""
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1", **env_extra}
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return proc, report


def test_rehearsal_runs_every_step_without_the_blocked_packages(tmp_path):
    proc, report = run_check(tmp_path, *REHEARSAL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = report["steps"]
    assert {name: e["status"] for name, e in steps.items()} == {name: "ok" for name in (
        "environment", "photos", "train", "portability", "resume", "kd_trial", "latency")}
    env = steps["environment"]["result"]
    assert not any(env["packages"][name] for name in ("ray", "optuna", "fvcore", "torchprofile", "plotly"))
    assert set(steps["photos"]["result"]["test"]) == {"chelsea", "rocket", "china", "flower", "grace_hopper"}
    train = steps["train"]["result"]
    for run in ("teacher_fp32", "teacher_amp_bf16", "supernet_fp32", "supernet_amp_bf16", "teacher_large_fp32",
                "teacher_large_amp_bf16", "teacher_cpu"):
        assert train[run]["steps_per_s"] > 0 and train[run]["val"], run
    assert train["teacher_fp32"]["timed_steps"] == 2 and train["teacher_cpu"]["threads"] >= 1
    # on the CPU the checks are exact: the same device, and a bit-exact resume
    portability = steps["portability"]["result"]
    for model in ("trained_here", "shipped_teacher"):
        assert portability[model] == {"fp32": {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "tolerance": 0.0, "ok": True}}
    resume = steps["resume"]["result"]
    assert resume["relative_distance_resumed"] == 0.0 and resume["tolerance"] == 0.0
    assert resume["val"]["resumed"] == resume["val"]["uninterrupted"]
    kd = steps["kd_trial"]["result"]
    assert kd["macs"] <= 0.5e9 and "not run" in kd["ray_search"]
    assert all(kd["export_max_abs_diff"][f] <= kd["export_tolerance"][f] for f in ("torchscript", "onnx"))
    latency = steps["latency"]["result"]
    assert latency["student"] == "kd trial" and latency["student_macs"] < latency["teacher_macs"]
    for key in ("1x64x64", "2x64x64"):
        assert set(latency["ms"][key]) == {"teacher_eager", "student_eager", "teacher_torchscript",
                                           "student_torchscript", "speedup_eager"}
        assert all(v > 0 for v in latency["ms"][key].values())


def test_a_failed_step_is_recorded_and_the_next_runs(tmp_path):
    proc, report = run_check(tmp_path, "--device", "cpu", "--only", "portability,environment")
    assert proc.returncode == 1
    assert report["ok"] is False
    assert report["steps"]["portability"]["status"] == "failed"
    assert "needs step train" in report["steps"]["portability"]["error"]
    assert report["steps"]["environment"]["status"] == "ok"


def test_a_step_past_its_timeout_is_recorded(tmp_path):
    proc, report = run_check(tmp_path, "--device", "cpu", "--only", "photos", "--timeout-scale", "0.001")
    assert proc.returncode == 1
    assert report["steps"]["photos"]["status"] == "timeout"


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    proc, _ = run_check(tmp_path, "--device", "cuda", CUDA_VISIBLE_DEVICES="")  # no GPU visible, on any machine
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --device cuda but this machine has no CUDA device; use --device cpu for a rehearsal"]


def test_amp_is_bfloat16_autocast_on_cuda_only():
    chosen = autocast(torch.device("cuda"), True)
    assert isinstance(chosen, torch.autocast)
    assert chosen.device == "cuda" and chosen.fast_dtype == torch.bfloat16
    assert not isinstance(autocast(torch.device("cuda"), False), torch.autocast)
    assert not isinstance(autocast(torch.device("cpu"), True), torch.autocast)


def cuda_tagged_checkpoint(path: Path) -> None:
    """A checkpoint whose storages say they live on cuda:0, as one saved from a GPU run does."""
    plain = path.with_suffix(".plain")
    torch.save({"w": torch.arange(3.0)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(info, data)


def test_a_checkpoint_written_on_cuda_loads_on_the_cpu(tmp_path):
    path = tmp_path / "cuda.pth"
    cuda_tagged_checkpoint(path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # the file really asks for CUDA
    loaded = safe_load(path)  # map_location="cpu"
    assert loaded["w"].device.type == "cpu" and loaded["w"].tolist() == [0.0, 1.0, 2.0]


def test_tolerances_follow_the_device_and_tf32():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert portability_tolerance(cpu, True) == portability_tolerance(cpu, False) == 0.0
    assert portability_tolerance(cuda, False) == PORTABILITY_TOLERANCE["fp32"] == 1e-4
    # TF32 on: at most one 8-bit grey level of the [-1, 1] output, and far looser than float32
    assert portability_tolerance(cuda, True) == PORTABILITY_TOLERANCE["tf32"] <= 2 / 255
    assert portability_tolerance(cuda, True) > 10 * portability_tolerance(cuda, False)
    assert resume_tolerance(cpu, 1e-3) == 0.0  # the CPU resumes bit-exactly, whatever CUDA does
    assert resume_tolerance(cuda, 1e-4) == pytest.approx(5e-4)
    assert resume_tolerance(cuda, 0.0) == 1e-6
    assert resume_tolerance(cuda, 1.0) == RESUME_CUDA_CEILING


def test_tf32_switch_restores_the_flags():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with tf32(not before[0]):
        assert torch.backends.cudnn.allow_tf32 is (not before[0])
        assert torch.backends.cuda.matmul.allow_tf32 is (not before[0])
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
