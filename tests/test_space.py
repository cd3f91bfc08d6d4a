"""SearchSpace: ordered choices, sampling, extremes, compact strings and size."""

import math
import random

import pytest

from spaces import UserError, load_space

SPACES = ("resnet", "inception", "agd", "unet")


@pytest.mark.parametrize("name", SPACES)
def test_encode_decode_round_trip(name):
    space = load_space(name)
    rng = random.Random(7)
    for _ in range(100):
        config = space.sample(rng)
        text = space.encode(config)
        assert space.decode(text) == config
        assert space.encode(space.decode(text)) == text


@pytest.mark.parametrize("name", SPACES)
def test_sampling_is_seeded_and_covers_choices(name):
    space = load_space(name)
    a = [space.encode(space.sample(random.Random(3))) for _ in range(3)]
    assert len(set(a)) == 1
    rng = random.Random(0)
    seen = {site.name: set() for site in space.sites}
    for _ in range(400):
        for site, value in space.sample(rng).items():
            seen[site].add(value)
    assert all(seen[s.name] == set(s.choices) for s in space.sites)


@pytest.mark.parametrize("name", SPACES)
def test_max_and_min_bound_the_samples(name):
    space = load_space(name)
    top, bottom = space.macs(space.max_config()), space.macs(space.min_config())
    rng = random.Random(1)
    for _ in range(200):
        macs = space.macs(space.sample(rng))
        assert bottom <= macs <= top
    assert space.decode("max") == space.max_config() and space.decode("min") == space.min_config()


def test_size_counts_configs():
    assert load_space("resnet").size == 7 ** 8
    assert load_space("inception").size == 5 ** 5 * 7 ** 54
    assert load_space("agd").size == 5 ** 5 * 13 ** 9
    space = load_space("resnet")
    assert math.prod(len(s.choices) for s in space.sites) == space.size


def test_gan_compression_strings_are_resnet_configs():
    space = load_space("resnet")
    config = space.decode("16_16_32_16_32_32_16_16")
    assert list(config) == ["stem", "down1", "trunk", "group1", "group2", "group3", "up1", "up2"]
    plan = space.plan(config)
    assert (plan.stem, plan.down1, plan.trunk, plan.up1, plan.up2) == (16, 32, 128, 32, 16)
    assert [b.hidden for b in plan.blocks] == [64] * 3 + [128] * 3 + [128] * 3


def test_agd_tokens_and_widths():
    space = load_space("agd")
    assert space.sites[3].choices[:4] == ("conv64", "conv128", "conv192", "conv256")
    config = space.decode("16_32_64_conv128_res64_skip_sep256_skip_skip_skip_skip_skip_32_16")
    plan = space.plan(config)
    assert plan.blocks[0].in_channels == 64 and plan.blocks[1].in_channels == 128 and plan.trunk_out == 128


@pytest.mark.parametrize("text, message", [
    ("16_16", "has 2 values but space 'resnet' has 8 sites"),
    ("16_16_32_16_32_32_16_17", "'17' is not a choice of site 'up2'"),
    ("16_16_32_16_32_32_16_x", "'x' is not a choice of site 'up2'"),
])
def test_decode_errors_say_what_is_allowed(text, message):
    with pytest.raises(UserError, match=message):
        load_space("resnet").decode(text)


def test_validate_rejects_unknown_and_missing_sites():
    space = load_space("resnet")
    config = space.max_config()
    with pytest.raises(UserError, match="unknown site"):
        space.validate({**config, "bogus": 1})
    del config["up1"]
    with pytest.raises(UserError, match="misses site 'up1'"):
        space.validate(config)
