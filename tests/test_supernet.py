"""One set of supernet weights serves every config; extracted subnets are plain and equal."""

import random

import pytest
import torch
from torch import nn

from spaces import load_space
from spaces.schema import parse_space
from spaces.space import SearchSpace
from spaces.supernet import Supernet

PLAIN_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.BatchNorm2d, nn.ReLU, nn.Tanh, nn.Identity,
               nn.ReflectionPad2d, nn.Sequential, nn.ModuleDict, nn.Dropout)


def small_space(name: str, root, norm: str = "instance") -> SearchSpace:
    folder = root / "tests" / "spaces" if name == "tiny_unet" else root / "spaces"
    text = (folder / f"{name}.yaml").read_text().replace("norm: instance", f"norm: {norm}")
    return SearchSpace(parse_space(text, file=f"{name}.yaml", name=name))


@pytest.mark.parametrize("name", ["resnet", "inception", "agd", "tiny_unet"])
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_extract_equals_supernet(name, norm, root):
    torch.manual_seed(0)
    space = small_space(name, root, norm)
    supernet = Supernet(space)
    for p in supernet.parameters():  # a global residual's head starts at zero: give it weights
        if not p.any():
            nn.init.normal_(p, std=0.1)
    for m in supernet.modules():  # non-trivial batch-norm statistics, so slicing mistakes show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    supernet.eval()
    rng = random.Random(4)
    x = torch.randn(2, 3, 32, 32)
    outputs = set()
    for config in [space.min_config(), space.max_config()] + [space.sample(rng) for _ in range(8)]:
        supernet.set_active(config)
        sub = supernet.extract()
        assert not sub.training
        with torch.no_grad():
            expected, got = supernet(x), sub(x)
        assert (expected - got).abs().max().item() < 1e-5, space.encode(config)
        outputs.add(round(got.sum().item(), 3))
        assert sum(p.numel() for p in sub.parameters()) == space.params(config)
        assert all(type(m).__module__.startswith("torch.nn") or type(m).__name__ in
                   ("Generator", "ResnetBlock", "InceptionBlock", "ConvCell", "Residual", "UnetGenerator") for m in sub.modules())
    assert len(outputs) > 5  # different configs really compute different functions


def test_extract_in_training_mode_matches_batch_statistics(root):
    torch.manual_seed(1)
    space = small_space("resnet", root, "batch")
    supernet = Supernet(space).train()
    config = space.sample(random.Random(2))
    supernet.set_active(config)
    sub = supernet.extract()
    x = torch.randn(4, 3, 32, 32)
    assert sub.training
    assert (supernet(x) - sub(x)).abs().max().item() < 1e-5


def test_shared_weights_are_inherited_by_every_subnet(root):
    space = load_space("resnet")
    supernet = Supernet(space)
    with torch.no_grad():
        supernet.net.stem[1].weight.fill_(0.5)
    small = supernet.extract(space.min_config())
    assert small.stem[1].weight.shape[0] == 16 and torch.all(small.stem[1].weight == 0.5)


def test_set_active_controls_the_forward(root):
    space = small_space("agd", root)
    supernet = Supernet(space).eval()
    config = space.decode("16_32_64_" + "_".join(["skip"] * 9) + "_32_16")
    supernet.set_active(config)
    assert all(cell.active == "skip" for cell in supernet.net.trunk)
    assert supernet.net.up1[0].active_out == 32
    assert supernet(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_unet_supernet_selects_both_parts_of_a_concatenated_input(root):
    # An up conv of a U-Net reads its level's skip and the level below concatenated: with the skip
    # narrower than its widest, the second part's channels start later than first-k slicing assumes.
    space = small_space("tiny_unet", root, "none")
    supernet = Supernet(space).eval()
    config = space.max_config()
    config["down0"] = 4  # the skip of level 0 narrower: up.0's input is 4 skip + 8 up1 channels
    supernet.set_active(config)
    up0 = supernet.net.up[0][1]
    assert up0.in_parts == ((0, 4), (8, 8))
    sub = supernet.extract()
    assert torch.equal(sub.up[0][1].weight, torch.cat([up0.weight[:4], up0.weight[8:16]]))


def test_batch_norm_recalibration_changes_the_statistics_deterministically(root):
    torch.manual_seed(3)
    space = small_space("tiny_unet", root, "batch")
    supernet = Supernet(space).eval()
    config = space.sample(random.Random(1))
    batches = [torch.randn(4, 3, 32, 32) * 2 + 1 for _ in range(3)]
    plain = supernet.extract(config)
    first = supernet.extract(config, calibration=batches)
    second = supernet.extract(config, calibration=batches)
    means = {name: m.running_mean for name, m in first.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert means and all(not torch.equal(m, dict(plain.named_modules())[n].running_mean) for n, m in means.items())
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    # the statistics are those of the batches: the first level's norm sees the first conv's outputs
    conv, norm = first.down[1][0], first.down[1][1]
    with torch.no_grad():
        feats = torch.cat([conv(torch.nn.functional.leaky_relu(first.down[0](x), 0.2)) for x in batches])
    assert torch.allclose(norm.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert first.training is False and norm.momentum == 0.1
