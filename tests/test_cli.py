"""``python -m nas.inspect`` as a user runs it: figures, JSON, checkpoints, and one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from reference import ResnetGenerator


def inspect(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nas.inspect", *args], capture_output=True, text=True, cwd=cwd)


def test_max_config_prints_both_conventions_and_params():
    out = inspect("--space", "resnet", "--config", "16_16_24_16_32_64_16_24", "--resolution", "256")
    assert out.returncode == 0, out.stderr
    assert "2.618G torchprofile" in out.stdout and "2.028G fvcore" in out.stdout
    assert "355,235" in out.stdout and "256x256" in out.stdout


def test_json_min_config_and_trace():
    out = inspect("--space", "agd", "--config", "min", "--json", "--trace", "--resolution", "32")
    report = json.loads(out.stdout)
    assert report["config"].startswith("16_32_64_skip") and report["resolution"] == [32, 32]
    assert report["macs"] == report["traced_macs"] and report["params"] > 0


def test_space_by_path(tmp_path, root):
    text = (root / "spaces" / "inception.yaml").read_text().replace("blocks: 9", "blocks: 3")
    (tmp_path / "mine.yaml").write_text(text)
    out = inspect("--space", str(tmp_path / "mine.yaml"), "--json")
    report = json.loads(out.stdout)
    assert report["space"] == "mine" and len(report["config"].split("_")) == 5 + 3 * 6


def test_teacher_checkpoint(tmp_path):
    torch.save(ResnetGenerator(ngf=64, n_blocks=9).state_dict(), tmp_path / "latest_net_G.pth")
    out = inspect("--teacher", str(tmp_path / "latest_net_G.pth"))
    assert out.returncode == 0, out.stderr
    assert "56.8G torchprofile" in out.stdout and "11,378,179" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--space", "vgg"], "unknown space 'vgg'"),
    (["--space", "resnet", "--config", "16_16"], "has 2 values"),
    (["--space", "resnet", "--resolution", "30"], "resolution '30' is not allowed"),
    (["--teacher", "/nonexistent.pth"], "not found"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    out = inspect(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_space_file_reports_file_and_line(tmp_path, root):
    text = (root / "spaces" / "agd.yaml").read_text().replace("[conv, res, sep, skip]", "[conv, res, sep, skipp]")
    (tmp_path / "bad.yaml").write_text(text)
    out = inspect("--space", str(tmp_path / "bad.yaml"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if text_line.startswith("operators"))
    assert f"bad.yaml:{line}: operators[3]: unknown operator 'skipp'" in out.stderr


@pytest.mark.parametrize("module, args, message", [
    ("nas.train", ["teacher", "--out", "/tmp/x", "--task", "/nonexistent"], "task /nonexistent not found"),
    ("nas.train", ["teacher", "--out", "/tmp/x", "--steps", "0"], "--steps must be at least 1"),
    ("nas.train", ["supernet", "--out", "/tmp/x", "--teacher", "/nonexistent.pth"], "not found"),
    ("nas.train", ["teacher", "--out", "/tmp/x", "--crop", "30"], "crop 30 is not allowed"),
    ("nas.export", ["--supernet", "/nonexistent.pth", "--config", "max", "--out", "/tmp/x"], "not found"),
    ("nas.apply", ["--model", "/nonexistent", "--input", ".", "--output", "/tmp/x"], "not found"),
    ("nas.publish", ["--checkpoint", "/nonexistent.pth", "--out", "/tmp/x.pth", "--name", "t"], "not found"),
    ("nas.publish", ["--out", "/tmp/x.pth"], "--checkpoint, --name required"),
    ("nas.publish", ["--remeasure", "--manifest", "/nonexistent.json"], "manifest /nonexistent.json not found"),
    ("nas.train", ["supernet", "--out", "/tmp/x", "--teacher", "t.pth", "--sandwich", "max,all"], "'all' is not a phase"),
    ("nas.apply", ["--model", "weights/sr4x/teacher.pth", "--input", ".", "--output", "/tmp/x", "--tile", "8"],
     "--tile must be at least 16"),
    ("nas.search", ["--budget", "1G", "--finetune-steps", "-1"], "--finetune-steps must be at least 0"),
])
def test_other_commands_fail_in_one_line(module, args, message):
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_files_that_are_not_checkpoints_are_named_for_what_they_are(tmp_path):
    """A text, JSON or image file, an empty file, a folder, or a truncated checkpoint given where a
    checkpoint is expected: one line that says what the file is, for every command that loads one."""
    from PIL import Image

    (tmp_path / "notes.txt").write_text("hello\n" * 20)
    (tmp_path / "run.json").write_text('{"a": 1}')
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "folder.pth").mkdir()
    (tmp_path / "cut.pth").write_bytes(open("weights/sr4x/teacher.pth", "rb").read()[:5000])
    cases = [("notes.txt", "it is a text file"), ("run.json", "it is a JSON file"), ("photo.png", "it is a PNG image"),
             ("empty.pth", "it is an empty file"), ("folder.pth", "is a folder"),
             ("cut.pth", "it is damaged or not a PyTorch checkpoint")]
    for name, message in cases:
        path = str(tmp_path / name)
        for module, args in (("nas.inspect", ["--teacher", path]),
                             ("nas.search", ["--budget", "1G", "--supernet", path, "--out", str(tmp_path / "r")])):
            out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
            assert out.returncode == 2, (module, name, out.stderr)
            assert message in out.stderr and "Traceback" not in out.stderr, (module, name, out.stderr)
            assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing written for bad input
