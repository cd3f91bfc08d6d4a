"""The shared end of channel pruning: an arbitrary keep-set becomes a config of the space whose module
holds the kept weights and computes what the masked widest network computes."""

import random

import pytest
import torch

from spaces.channels import ChannelMasks, channel_groups, derive_config, inherit, widest_generator
from spaces.space import SearchSpace

TINY = {"inception": "tests/spaces/tiny_inception.yaml", "resnet": "tests/spaces/tiny_resnet.yaml"}


def space_with_norm(family: str, norm: str) -> SearchSpace:
    text = open(TINY[family]).read()
    for old in ("norm: instance", "norm: none", "norm: batch"):
        text = text.replace(old, f"norm: {norm}")
    return SearchSpace.from_text(text, source=TINY[family], name=f"tiny_{family}_{norm}")


def random_network(space: SearchSpace) -> torch.nn.Module:
    torch.manual_seed(0)
    network = widest_generator(space, "cpu")
    for p in network.parameters():
        torch.nn.init.normal_(p, std=0.3)
    for m in network.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return network.eval()


def masked_and_pruned(space, network, config, scores):
    """Outputs of the widest network under binary masks (the top channels by score) and of the pruned one."""
    groups = channel_groups(space)
    masks = {}
    for name, group in groups.items():
        keep = torch.argsort(scores[name], descending=True)[: int(config[group.site]) * group.scale]
        masks[name] = torch.zeros(group.size).index_fill_(0, keep, 1.0)
    counts = {name: int(m.sum()) for name, m in masks.items()}
    assert derive_config(space, groups, counts) == space.validate(config)
    x = torch.randn(2, 3, 32, 32)
    hooks = ChannelMasks(network, groups)
    hooks.set(masks)
    with torch.no_grad():
        masked = network(x)
    hooks.remove()
    pruned = inherit(space, network, scores, config, groups).eval()
    with torch.no_grad():
        return masked, pruned(x), pruned


@pytest.mark.parametrize("family", ["inception", "resnet"])
@pytest.mark.parametrize("norm", ["none", "instance", "batch"])
def test_the_pruned_module_computes_what_the_masked_network_computes(family, norm):
    space = space_with_norm(family, norm)
    network = random_network(space)
    rng = random.Random(3)
    for _ in range(3):
        config = space.sample(rng)
        scores = {name: torch.randn(g.size) for name, g in channel_groups(space).items()}
        masked, pruned, module = masked_and_pruned(space, network, config, scores)
        assert (masked - pruned).abs().max() <= 1e-5 * masked.abs().max()
        assert sum(p.numel() for p in module.parameters()) == space.params(config)
    # without the permutation (channels kept in place) the outputs differ: the test can fail
    identity = {name: -torch.arange(g.size, dtype=torch.float) for name, g in channel_groups(space).items()}
    masked, _, _ = masked_and_pruned(space, network, config, scores)
    _, in_place, _ = masked_and_pruned(space, network, config, identity)
    assert (masked - in_place).abs().max() > 1e-3


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_a_block_with_no_channels_left_is_the_identity(norm):
    space = space_with_norm("inception", norm)
    network = random_network(space)
    config = space.max_config()
    config.update({site.name: 0 for site in space.sites if site.name.startswith("b0.")})
    scores = {name: torch.randn(g.size) for name, g in channel_groups(space).items()}
    masked, pruned, module = masked_and_pruned(space, network, config, scores)
    assert (masked - pruned).abs().max() <= 1e-5 * masked.abs().max()
    x = torch.randn(1, config["trunk"], 8, 8)
    assert torch.equal(module.trunk[0](x), x)  # no branch left: the block passes its input on
    assert len(list(module.trunk[0].parameters())) == 0


def test_groups_cover_every_width_site_and_tie_the_trunk():
    space = SearchSpace.from_text(open("spaces/sr4x/resnet.yaml").read(), source="resnet", name="resnet")
    groups = channel_groups(space)
    assert {g.site for g in groups.values()} == {s.name for s in space.sites}
    trunk = groups["trunk"]
    # down2's output, every block's input and output, and up1's input move together
    blocks = space.spec.blocks
    assert trunk.size == 128 and len([t for t in trunk.tensors if t[0].startswith("trunk.")]) >= 3 * blocks
    assert ("up1.0.weight", 0) in trunk.tensors and ("down2.0.weight", 0) in trunk.tensors
    assert [conv for conv, *_ in trunk.primaries] == ["down2.0"]  # CAT: the trunk's width is down2's
    assert len(groups["group1"].primaries) == 2  # two blocks share the group's hidden width
