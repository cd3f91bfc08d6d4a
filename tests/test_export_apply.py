"""Export a subnet (checkpoint, TorchScript, ONNX) and apply generators to a user's images."""

import hashlib
import json

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from nas import apply as apply_cli
from nas import export as export_cli
from nas.checkpoint import load_supernet
from nas import train
from nas.checkpoint import load_generator
from nas.data import SR4X_SPLIT
from spaces import UserError



@pytest.fixture(scope="module")
def trained(tiny_models):
    return tiny_models


def test_export_writes_three_forms_that_agree(tmp_path, trained):
    _, supernet_path = trained
    supernet, _ = load_supernet(supernet_path)
    config = "8_16_16_4_0_8_4_0_8_0_4_8_4"
    assert export_cli.main(["--supernet", str(supernet_path), "--config", config, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["config"] == config and report["max_abs_diff"]["onnx"] <= 1e-4
    reference = supernet.extract(supernet.space.decode(config)).eval()
    x = torch.rand(1, 3, 40, 52) * 2 - 1  # a size not used when exporting
    with torch.no_grad():
        expected = reference(x)
        assert (expected - x).abs().max() > 1e-3  # the head is trained: outputs are not just the input
        assert (load_generator(tmp_path / "model.pth").module(x) - expected).abs().max() == 0
        assert (torch.jit.load(str(tmp_path / "model.ts"))(x) - expected).abs().max() < 1e-5
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - expected.numpy()).max() < 1e-4
    assert report["macs"]["torchprofile"] == supernet.space.macs(supernet.space.decode(config))
    with pytest.raises(UserError, match="already holds an export"):
        export_cli.main(["--supernet", str(supernet_path), "--config", config, "--out", str(tmp_path)])


def test_export_with_finetuning_changes_the_weights(tmp_path, trained):
    _, supernet_path = trained
    export_cli.main(["--supernet", str(supernet_path), "--config", "min", "--out", str(tmp_path / "a")])
    export_cli.main(["--supernet", str(supernet_path), "--config", "min", "--out", str(tmp_path / "b"),
                     "--finetune-steps", "2", "--batch-size", "2", "--crop", "32", "--no-progress"])
    a, b = load_generator(tmp_path / "a" / "model.pth"), load_generator(tmp_path / "b" / "model.pth")
    assert b.meta["finetune_steps"] == 2
    assert any(not torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))


def test_export_rejects_a_bad_config(tmp_path, trained):
    with pytest.raises(UserError, match="is not a choice of site"):
        export_cli.main(["--supernet", str(trained[1]), "--config", "8_16_16_4_0_8_4_0_8_0_4_8_17",
                         "--out", str(tmp_path)])


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_apply_upscales_sr_inputs_and_skips_unreadable_files(tmp_path, trained, capsys):
    teacher, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 41, 3), dtype=np.uint8)).save(inputs / "a.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(inputs / "b.jpg")
    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    before = digest(inputs)
    assert apply_cli.main(["--model", str(teacher), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 0
    assert digest(inputs) == before
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "out").iterdir()}
    assert sizes == {"a.png": (164, 120), "b.png": (64, 64)}
    assert "broken.png" in capsys.readouterr().err


def test_apply_handles_tiny_16_bit_huge_and_same_named_images(tmp_path, trained, capsys):
    """A 1x1 image, a 16-bit greyscale one, a header claiming 100000x100000 pixels, and x.png beside x.jpg:
    outputs for the first two (of their own sizes, 16 bits scaled, not clipped), the third skipped by name,
    and the last two under names that do not collide."""
    import struct
    import zlib

    teacher, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((1, 1, 3), 128, np.uint8)).save(inputs / "dot.png")
    Image.fromarray(np.full((12, 12), 32896, np.uint16)).save(inputs / "grey16.png")  # 32896 / 257 = 128

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (inputs / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0,
                                                                                       0, 0)) + chunk(b"IEND", b""))
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(inputs / "x.png")
    Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(inputs / "x.jpg")
    assert apply_cli.main(["--model", str(teacher), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 0
    out = {p.name: np.asarray(Image.open(p)) for p in (tmp_path / "out").iterdir()}
    assert sorted(out) == ["dot.png", "grey16.png", "x.jpg.png", "x.png.png"]
    assert out["dot.png"].shape == (4, 4, 3) and out["grey16.png"].shape == (48, 48, 3)
    assert 60 < out["grey16.png"].mean() < 200  # mid-grey in, not white (255) as a clipping conversion gives
    assert out["x.png.png"].mean() > out["x.jpg.png"].mean() + 50  # each output is its own input's
    err = capsys.readouterr().err
    assert "huge.png: it claims more pixels than Pillow decodes" in err


def test_apply_export_folder_and_single_image(tmp_path, trained):
    _, supernet_path = trained
    export_cli.main(["--supernet", str(supernet_path), "--config", "max", "--out", str(tmp_path / "export")])
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(image)
    apply_cli.main(["--model", str(tmp_path / "export"), "--input", str(image), "--output", str(tmp_path / "out")])
    assert Image.open(tmp_path / "out" / "photo.png").size == (96, 80)
    with pytest.raises(UserError, match="is in the input folder"):
        apply_cli.main(["--model", str(tmp_path / "export"), "--input", str(image), "--output", str(tmp_path)])


def test_publish_writes_slim_files_and_a_manifest(tmp_path, trained):
    from nas import publish

    teacher, supernet_path = trained
    publish.main(["--checkpoint", str(teacher), "--out", str(tmp_path / "teacher.pth"), "--name", "teacher"])
    publish.main(["--checkpoint", str(supernet_path), "--out", str(tmp_path / "supernet.pth"), "--name", "supernet"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["teacher"]
    assert entry["sha256"] == hashlib.sha256((tmp_path / "teacher.pth").read_bytes()).hexdigest()
    assert entry["command"].startswith("python -m nas.train teacher --space ")
    assert "tiny_teacher.yaml --config max --task sr4x" in entry["command"]
    assert "--steps 3" in entry["command"] and entry["seed"] == 0 and "val: coffee" in entry["split"]
    assert entry["metrics"]["test"]["psnr"] > 10 and entry["bicubic_psnr"]["test"] > 20
    assert manifest["supernet"]["metrics"]["min"]["val"]["fidelity_psnr"] > 10
    assert (tmp_path / "supernet.pth").stat().st_size < supernet_path.stat().st_size  # no optimizer state
    supernet, _ = load_supernet(tmp_path / "supernet.pth")
    assert load_generator(tmp_path / "teacher.pth").meta["task"] == "sr4x"
    assert set(entry["metrics"]["test"]["per_image"]) == set(SR4X_SPLIT["test"])  # whole photos, each reported
    assert "share" in manifest["supernet"]["metrics"]["max"]["test"]
    # --remeasure measures the entries again in place (as after a change of protocol); files are untouched
    expected = entry["metrics"]["test"]["psnr"]
    manifest["supernet"]["teacher"] = "teacher.pth"  # as shipped: supernets distilled from the published teacher
    manifest["teacher"]["metrics"] = {"val": {"psnr": 0.0}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    publish.main(["--remeasure", "--manifest", str(tmp_path / "manifest.json")])
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert again["teacher"]["metrics"]["test"]["psnr"] == pytest.approx(expected)
    assert again["teacher"]["sha256"] == entry["sha256"] and again["teacher"]["protocol"] == publish.PROTOCOL
    (tmp_path / "teacher.pth").write_bytes(b"changed")
    with pytest.raises(UserError, match="does not match the sha256 of manifest entry 'teacher'"):
        publish.main(["--remeasure", "--manifest", str(tmp_path / "manifest.json")])


def test_finetuning_uses_the_supernet_distillation_layers(tmp_path, trained):
    """A supernet distilled from 1 teacher layer has 1 mapper; the export fine-tune must use it
    (the default of 3 layers, 2 in this 2-block space, would want mappers it does not have)."""
    teacher, _ = trained
    common = ["--steps", "1", "--batch-size", "2", "--crop", "32", "--eval-every", "1", "--checkpoint-every", "1",
              "--no-progress", "--device", "cpu"]
    train.main(["supernet", "--space", "tests/spaces/tiny_inception.yaml", "--teacher", str(teacher),
                "--distill-layers", "1", "--distill-weight", "0.5", "--out", str(tmp_path / "supernet"), *common])
    supernet_path = tmp_path / "supernet" / "checkpoint.pth"
    assert export_cli.main(["--supernet", str(supernet_path), "--config", "min", "--out", str(tmp_path / "out"),
                            "--finetune-steps", "1", "--batch-size", "2", "--crop", "32", "--no-progress"]) == 0
    assert load_generator(tmp_path / "out" / "model.pth").meta["finetune_steps"] == 1
