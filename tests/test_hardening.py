"""Bad input to every command: exit code 2, one line on stderr naming the argument or file, no traceback,
and nothing new or changed in the inputs or where the output would go. Run in-process (``nas.cli.run``,
as ``python -m`` runs it) so that the table stays fast; ``test_cli.py`` runs such cases as subprocesses."""

import hashlib
import importlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.cli import run

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "sr4x"
PROC = "/proc/gan-nas-cannot-write-here"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_models):
    """A folder of good and bad inputs: damaged checkpoints, a text file, an alias bomb, photos."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("inputs")
    teacher, _ = tiny_models
    (folder / "teacher.pth").write_bytes(Path(teacher).read_bytes())
    (folder / "notes.txt").write_text("hello\n" * 20)
    (folder / "a_file").write_text("not a folder\n")
    torch.save(torch.zeros(3), folder / "tensor.pth")
    record = torch.load(SHIPPED / "teacher.pth", weights_only=True)
    generator = record.get("generator", record)
    torch.save({**generator, "state_dict": [1, 2]}, folder / "state_not_dict.pth")
    state = dict(generator["state_dict"])
    first = next(iter(state))
    state[first] = torch.zeros(3)
    torch.save({**generator, "state_dict": state}, folder / "wrong_shapes.pth")
    supernet = torch.load(SHIPPED / "supernet_resnet.pth", weights_only=True)
    weights = dict(supernet["supernet"])
    weights.pop(next(iter(weights)))
    torch.save({**supernet, "supernet": weights}, folder / "supernet_missing_key.pth")
    damaged = torch.load(teacher, weights_only=True)
    damaged["optimizers"]["generator"] = {"state": {}, "param_groups": []}
    (folder / "damaged_run").mkdir()
    torch.save(damaged, folder / "damaged_run" / "checkpoint.pth")
    (folder / "search").mkdir()
    (folder / "search" / "run.json").write_text("{not json")
    (folder / "manifest.json").write_text("[1, 2")
    (folder / "bomb.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n")
    (folder / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "photos" / "a.png")
    (folder / "unreadable").mkdir()
    (folder / "unreadable" / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "dangling").symlink_to("nowhere/deep")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


TINY = "tests/spaces/tiny_teacher.yaml"
SHORT = ["--steps", "2", "--batch-size", "2", "--crop", "32", "--no-progress"]  # a regression would not train long
# (command, arguments with {IN} for the inputs folder and {OUT} for a fresh output path, what stderr says)
CASES = [
    ("nas.train", ["teacher", "--space", TINY, "--out", "{IN}/a_file"], "is a file, not a folder"),
    ("nas.train", ["teacher", "--space", TINY, "--out", PROC], "nothing can be written in /proc"),
    ("nas.train", ["teacher", "--space", TINY, "--out", "{IN}/a_file/x"], "is a file, so no folder can be made"),
    ("nas.train", ["teacher", "--space", TINY, "--out", "{OUT}", "--lr", "nan", *SHORT], "--lr must be a positive number"),
    ("nas.train", ["teacher", "--space", TINY, "--out", "{OUT}", "--device", "banana", *SHORT], "'banana' is not a device"),
    ("nas.train", ["teacher", "--space", TINY, "--out", "{OUT}", "--ndf", "0", *SHORT], "--ndf must be at least 1"),
    ("nas.train", ["teacher", "--space", TINY, "--out", "{OUT}", "--workers", "0", *SHORT], "--workers must be at least 1"),
    ("nas.train", ["teacher", "--space", str(SHIPPED.parents[1] / TINY), "--out", "{IN}/damaged_run", "--resume", "--steps", "4",
                   "--batch-size", "2", "--crop", "32"], "does not fit this run"),
    ("nas.train", ["teacher", "--space", "{IN}/bomb.yaml", "--out", "{OUT}"], "anchors and aliases"),
    ("nas.train", ["supernet", "--space", "tests/spaces/tiny_inception.yaml", "--teacher", "{IN}/notes.txt",
                   "--out", "{OUT}"], "it is a text file"),
    ("nas.train", ["supernet", "--space", "tests/spaces/tiny_inception.yaml", "--teacher", "{IN}/teacher.pth",
                   "--discriminator", "{IN}/tensor.pth", "--gan-weight", "0.1", "--out", "{OUT}", *SHORT], "holds a Tensor"),
    ("nas.train", ["student", "--method", "kd", "--budget", "1G", "--out", "{IN}/a_file"], "is a file, not a folder"),
    ("nas.train", ["student", "--method", "kd", "--budget", "1G", "--out", "{OUT}", "--workers", "2",
                   "--batch-size", "3"], "--batch-size 3 is not divisible by --workers 2"),
    ("nas.search", ["--budget", "1G", "--out", "{IN}/a_file"], "is a file, not a folder"),
    ("nas.search", ["--budget", "1G", "--out", PROC], "nothing can be written in /proc"),
    ("nas.search", ["--budget", "1G", "--out", "{OUT}", "--seed", "-1"], "--seed"),
    ("nas.search", ["--budget", "1G", "--out", "{OUT}", "--supernet", "{IN}/supernet_missing_key.pth"],
     "does not fit the network it describes (missing"),
    ("nas.search", ["--resume", "--out", "{IN}/search"], "is damaged"),
    ("nas.export", ["--supernet", str(SHIPPED / "supernet_resnet.pth"), "--config", "max", "--out", "{IN}/a_file"],
     "is a file, not a folder"),
    ("nas.export", ["--supernet", str(SHIPPED / "supernet_resnet.pth"), "--config", "max", "--out", PROC],
     "nothing can be written in /proc"),
    ("nas.export", ["--supernet", "{IN}/supernet_missing_key.pth", "--config", "max", "--out", "{OUT}"],
     "supernet weights does not fit"),
    ("nas.export", ["--supernet", str(SHIPPED / "supernet_resnet.pth"), "--config", "1_2", "--out", "{OUT}"],
     "config '1_2'"),
    ("nas.export", ["--supernet", str(SHIPPED / "supernet_resnet.pth"), "--config", "min", "--out", "{IN}/dangling"],
     "which does not exist; give a folder"),
    ("nas.export", ["--supernet", str(SHIPPED / "supernet_resnet.pth"), "--config", "min", "--out", "{OUT}/" + "a" * 300],
     "300 bytes long, over the 255"),
    ("nas.inspect", ["--teacher", "{IN}/" + "b" * 300 + ".pth"], "File name too long"),
    ("nas.apply", ["--model", str(SHIPPED / "teacher.pth"), "--input", "{IN}/photos", "--output", "{IN}/a_file"],
     "is a file, not a folder"),
    ("nas.apply", ["--model", str(SHIPPED / "teacher.pth"), "--input", "{IN}/photos", "--output", PROC],
     "nothing can be written in /proc"),
    ("nas.apply", ["--model", str(SHIPPED / "teacher.pth"), "--input", "{IN}/photos", "--output", "{IN}/photos/out"],
     "is in the input folder"),
    ("nas.apply", ["--model", "{IN}/state_not_dict.pth", "--input", "{IN}/photos", "--output", "{OUT}"],
     "its state dict is a list"),
    ("nas.apply", ["--model", str(SHIPPED / "teacher.pth"), "--input", "{IN}/photos", "--output", "{OUT}",
                   "--scale", "0"], "--scale must be at least 1"),
    ("nas.publish", ["--checkpoint", "{IN}/teacher.pth", "--out", "{IN}/photos", "--name", "t"], "is a folder"),
    ("nas.publish", ["--checkpoint", "{IN}/teacher.pth", "--out", PROC + "/t.pth", "--name", "t"],
     "nothing can be written in /proc"),
    ("nas.publish", ["--checkpoint", "{IN}/teacher.pth", "--out", "{OUT}/t.pth", "--name", "t", "--manifest",
                     "{IN}/manifest.json"], "is not valid JSON"),
    ("nas.publish", ["--checkpoint", "{IN}/teacher.pth", "--out", "{IN}/teacher.pth", "--name", "t"],
     "is the training checkpoint itself"),
    ("nas.inspect", ["--teacher", "{IN}/notes.txt"], "it is a text file"),
    ("nas.inspect", ["--teacher", "{IN}/wrong_shapes.pth"], "wrong shapes"),
    ("nas.inspect", ["--teacher", "{IN}/tensor.pth"], "is not a generator checkpoint"),
    ("nas.inspect", ["--space", "{IN}/bomb.yaml"], "anchors and aliases"),
]


def call(module: str, argv: list[str], capsys) -> tuple[int, str]:
    """``python -m MODULE ARGV`` in this process: (exit code, stderr)."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exited:
        run(main, argv)
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("module, args, message", CASES, ids=[f"{c[0]}:{c[2][:30]}" for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(module, args, message, inputs, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "out"
    argv = [a.replace("{IN}", str(inputs)).replace("{OUT}", str(out)) for a in args]
    before = snapshot(inputs)
    code, err = call(module, argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert snapshot(inputs) == before  # nothing written or changed among the inputs
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nor where the output would go


# Numbers that no option accepts where a count or a rate is asked for.
BAD_NUMBERS = st.one_of(st.integers(max_value=0).map(str), st.sampled_from(["nan", "inf", "-inf", "-0.5", "1e999x",
                                                                            "", "ten", "0x10", "1,5"]))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--steps", "--batch-size", "--crop", "--eval-every", "--checkpoint-every", "--ndf",
                             "--lr"]), value=BAD_NUMBERS)
def test_no_invalid_number_starts_a_training(flag, value, tmp_path, capsys):
    out = tmp_path / "never"
    code, err = call("nas.train", ["teacher", "--space", TINY, "--out", str(out), flag, value], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (flag, value, err)
    assert not out.exists()


# Each command's numeric flags, with the arguments that make the rest of its command line valid.
NUMERIC_FLAGS = {
    "nas.search": (["--budget", "1G", "--out", "{OUT}", "--no-progress"],
                   ["--trials", "--seed", "--gpus-per-trial", "--cpus-per-trial", "--max-failures", "--budget"]),
    "nas.export": (["--supernet", str(SHIPPED / "supernet_resnet.pth"), "--config", "min", "--out", "{OUT}",
                   "--finetune-steps", "1", "--no-progress"], ["--finetune-steps", "--lr", "--batch-size", "--crop"]),
    "nas.apply": (["--model", str(SHIPPED / "teacher.pth"), "--input", "{IN}/photos", "--output", "{OUT}"],
                  ["--tile", "--scale"]),
}


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from([(m, f) for m, (_, flags) in NUMERIC_FLAGS.items() for f in flags]),
       value=st.one_of(st.integers(max_value=-1).map(str), st.sampled_from(["nan", "inf", "-inf", "", "ten", "1e999x"])))
def test_no_invalid_number_starts_a_search_an_export_or_an_apply(case, value, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    module, flag = case
    base, _ = NUMERIC_FLAGS[module]
    out = tmp_path / "never"
    argv = [a.replace("{OUT}", str(out)).replace("{IN}", str(inputs)) for a in base]
    if flag in argv:  # the flag's value replaced, not given twice
        argv = argv[:argv.index(flag)] + argv[argv.index(flag) + 2:]
    code, err = call(module, [*argv, flag, value], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (module, flag, value, err)
    assert not out.exists()


VALID_SPACE = (Path(__file__).parent / "spaces" / "tiny_teacher.yaml").read_text()
MUTATIONS = st.sampled_from([
    lambda t, v: t.replace("8", v, 1),  # a width becomes anything
    lambda t, v: t.replace("blocks:", f"blocks: {v}\nblocks_old:", 1),
    lambda t, v: t + f"\n{v}: 1\n",  # an unknown or repeated key
    lambda t, v: t.replace(":", f": {v}", 1),
    lambda t, v: v + "\n" + t,
    lambda t, v: t[: len(t) // 2] + v,  # truncated
    lambda t, v: "\n".join(line for i, line in enumerate(t.splitlines()) if i != len(v) % len(t.splitlines())),
])
ODD_VALUES = st.one_of(st.sampled_from(["-1", "0", "1e9", "9" * 5000, "&a [1]", "*a", "[[[", "{", "null", "true",
                                        "family", "name", "0.5", "'x'", "!!python/object:os.system"]),
                       st.text(max_size=12))


@settings(max_examples=60, deadline=None, database=None)
@given(mutate=MUTATIONS, value=ODD_VALUES)
def test_a_mutated_space_file_loads_or_is_refused_in_one_line(mutate, value, tmp_path_factory):
    from spaces import UserError, load_space

    folder = tmp_path_factory.mktemp("space")
    path = folder / "mutated.yaml"
    path.write_text(mutate(VALID_SPACE, value))
    try:
        space = load_space(str(path))
    except UserError as exc:
        assert "\n" not in str(exc) and str(path.name) in str(exc), str(exc)
        return
    # what loads is bounded: its widest network can be described without allocating it
    assert space.macs(space.max_config()) < 10 ** 15


def test_apply_with_every_image_skipped_ends_in_an_error_and_makes_no_folder(inputs, tmp_path, capsys):
    code, err = call("nas.apply", ["--model", str(SHIPPED / "teacher.pth"), "--input", str(inputs / "unreadable"),
                                   "--output", str(tmp_path / "out"), "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert lines == [f"skipped: cannot read image {inputs / 'unreadable' / 'broken.png'}: UnidentifiedImageError; "
                     "remove or replace the file",
                     "error: no image written: all 1 input(s) were skipped (the reasons are above)"]
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_run_is_refused_with_what_does_not_fit(tmp_path, capsys):
    """--resume with a checkpoint of the same kind whose weights do not fit: the keys, in one line."""
    from nas import train

    args = ["teacher", "--space", TINY, "--steps", "2", "--batch-size", "2", "--crop", "32", "--no-progress",
            "--device", "cpu", "--eval-every", "2", "--checkpoint-every", "2"]
    train.main([*args, "--out", str(tmp_path / "run")])
    record = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    state = record["generator"]["state_dict"]
    state.pop(next(iter(state)))
    torch.save(record, tmp_path / "run" / "checkpoint.pth")
    saved = (tmp_path / "run" / "checkpoint.pth").read_bytes()
    code, err = call("nas.train", [*args, "--out", str(tmp_path / "run"), "--resume", "--steps", "4"], capsys)
    assert code == 2 and "generator does not fit the network it describes (missing" in err, err
    assert (tmp_path / "run" / "checkpoint.pth").read_bytes() == saved
    assert json.dumps(sorted(p.name for p in (tmp_path / "run").iterdir())) == '["checkpoint.pth"]'


def interrupt_when(command: list[str], ready, timeout: float = 120.0):
    """Start ``command``, send it Ctrl-C (SIGINT) once ``ready()`` is true; returns the finished process."""
    import signal
    import subprocess
    import sys
    import time

    # (pytest-xdist's workers ignore SIGINT, and a child inherits that: give it the default back)
    proc = subprocess.Popen([sys.executable, "-m", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    began = time.monotonic()
    while not ready() and proc.poll() is None and time.monotonic() - began < timeout:
        time.sleep(0.02)
    assert proc.poll() is None, "the command ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    proc.stdout_text, proc.stderr_text = out, err
    return proc


def test_ctrl_c_during_training_exits_130_and_resume_finishes_the_run(tmp_path):
    from nas.checkpoint import read_training_record

    out = tmp_path / "run"
    args = ["nas.train", "teacher", "--space", TINY, "--steps", "60", "--checkpoint-every", "5", "--eval-every", "60",
            "--batch-size", "2", "--crop", "32", "--no-progress", "--device", "cpu", "--out", str(out)]
    proc = interrupt_when(args, lambda: (out / "checkpoint.pth").exists())
    assert proc.returncode == 130, proc.stderr_text
    assert "run the same command with --resume" in proc.stderr_text and "Traceback" not in proc.stderr_text
    stopped = read_training_record(out / "checkpoint.pth")  # whole, not half-written
    assert 5 <= stopped["step"] < 60 and [p.name for p in out.iterdir()] == ["checkpoint.pth"]
    from nas import train

    train.main([*args[1:], "--resume"])
    assert read_training_record(out / "checkpoint.pth")["step"] == 60


def test_ctrl_c_during_an_export_leaves_nothing_and_the_same_export_then_works(tmp_path):
    out = tmp_path / "student"
    args = ["nas.export", "--supernet", str(SHIPPED / "supernet_resnet.pth"), "--config", "min", "--out", str(out)]
    # interrupted half-way: the checkpoint is in the staging folder, TorchScript and ONNX are not yet
    proc = interrupt_when(args, lambda: any((p / "model.pth").exists() for p in tmp_path.glob(".student.*")))
    assert proc.returncode == 130, proc.stderr_text
    assert list(tmp_path.iterdir()) == []  # neither a partial export nor its staging folder
    from nas import export

    export.main(args[1:])
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "model.pth", "model.ts"]
