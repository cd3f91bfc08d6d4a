"""pix2pix/CycleGAN generator checkpoints load as teachers that compute what the original does."""

import os

import pytest
import torch

from nas.checkpoint import load_generator, safe_load, save_generator
from reference import ResnetGenerator, UnetGenerator, randomize_norms
from spaces import UserError, load_space


def saved(tmp_path, state, name="latest_net_G.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("n_blocks", [9, 6])
@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("dropout", [False, True])
def test_imported_teacher_equals_original(tmp_path, n_blocks, norm, dropout):
    torch.manual_seed(0)
    original = ResnetGenerator(ngf=8, norm=norm, use_dropout=dropout, n_blocks=n_blocks).eval()
    randomize_norms(original)
    keys = list(original.state_dict())
    assert "model.1.weight" in keys and f"model.{10 + n_blocks + 7}.bias" in keys
    assert any(".conv_block.6.weight" in k for k in keys) == (dropout or norm == "batch")
    teacher = load_generator(saved(tmp_path, original.state_dict(), "horse2zebra_net_G_A.pth"))
    assert teacher.space.family == "resnet" and teacher.space.spec.blocks == n_blocks
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher.module(x), original(x))


def test_module_prefix_and_published_figures(tmp_path):
    original = ResnetGenerator(ngf=64, n_blocks=9).eval()
    state = {f"module.{k}": v for k, v in original.state_dict().items()}
    teacher = load_generator(saved(tmp_path, state))
    assert teacher.space.macs(teacher.config) == 56_799_264_768
    assert teacher.space.params(teacher.config) == 11_378_179
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher.module(x), original(x))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = ResnetGenerator(ngf=8, n_blocks=9).state_dict()
    del state["model.4.weight"]
    state["model.99.weight"] = torch.zeros(1)
    with pytest.raises(UserError) as info:
        load_generator(saved(tmp_path, state))
    message = str(info.value)
    assert "missing keys model.4.weight" in message and "unexpected keys model.99.weight" in message
    assert "\n" not in message


def test_shape_mismatch_is_named(tmp_path):
    state = ResnetGenerator(ngf=8, n_blocks=9).state_dict()
    state["model.10.conv_block.1.weight"] = torch.zeros(16, 32, 3, 3)
    expected = r"model\.10\.conv_block\.1\.weight has shape \[16, 32, 3, 3\] but .* expects \[32, 32, 3, 3\]"
    with pytest.raises(UserError, match=expected):
        load_generator(saved(tmp_path, state))


@pytest.mark.parametrize("num_downs", [8, 7])
@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_imported_unet_teacher_equals_original(tmp_path, num_downs, norm, dropout, prefix):
    torch.manual_seed(num_downs)
    original = UnetGenerator(num_downs=num_downs, ngf=4, norm=norm, use_dropout=dropout).eval()
    randomize_norms(original)
    keys = list(original.state_dict())
    assert "model.model.0.weight" in keys and "model.model.1.model.1.weight" in keys
    path = saved(tmp_path, {prefix + k: v for k, v in original.state_dict().items()})
    teacher = load_generator(path)
    assert teacher.space.family == "unet" and len(teacher.space.spec.down) == num_downs
    assert teacher.space.spec.norm == norm and teacher.space.params(teacher.config) == sum(
        p.numel() for p in original.parameters())
    side = 2 ** num_downs
    x = torch.randn(2, 3, side, side + side // 2 * 2)  # not square: widths and heights kept apart
    with torch.no_grad():
        assert torch.equal(teacher.module(x), original(x))


def test_unet_checkpoint_that_fits_neither_family_names_what_differs(tmp_path):
    state = UnetGenerator(num_downs=7, ngf=4).state_dict()
    state["model.model.1.model.5.weight"] = torch.zeros(16, 8, 4, 4)
    expected = r"model\.model\.1\.model\.5\.weight has shape \[16, 8, 4, 4\] but a pix2pix unet_128 .* expects \[16, 4, 4, 4\]"
    with pytest.raises(UserError, match=expected):
        load_generator(saved(tmp_path, state))
    del state["model.model.1.model.2.running_var"]
    with pytest.raises(UserError, match=r"missing keys model\.model\.1\.model\.2\.running_var"):
        load_generator(saved(tmp_path, state))


def test_not_a_generator(tmp_path):
    with pytest.raises(UserError, match="not a generator checkpoint"):
        load_generator(saved(tmp_path, {"epoch": 3}))
    with pytest.raises(UserError, match="not a pix2pix ResnetGenerator or UnetGenerator state dict"):
        load_generator(saved(tmp_path, {"layer.weight": torch.zeros(2)}))


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model.1.weight": RunsCode()}, path)
    with pytest.raises(UserError, match="refused to load .*pickle that would run code"):
        safe_load(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_generator(tmp_path / "nope.pth")


def test_own_format_round_trip(tmp_path):
    space = load_space("agd")
    config = space.sample(__import__("random").Random(0))
    module = space.build(config).eval()
    save_generator(tmp_path / "g.pth", module, space, config, note="test")
    loaded = load_generator(tmp_path / "g.pth")
    assert loaded.space.encode(loaded.config) == space.encode(config)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), module(x))
    assert not list(tmp_path.glob(".g.pth.*"))  # no temporary file left behind
