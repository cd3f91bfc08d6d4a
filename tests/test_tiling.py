"""The one tiler (evaluation and nas.apply): a tiled run equals a whole run on tile-invariant generators."""

import pytest
import torch

from evaluators.tiling import geometry, run_image
from spaces.space import load_space


def generator(space_file: str, config: str = "max", seed: int = 0):
    space = load_space(space_file)
    torch.manual_seed(seed)
    return space.build(space.decode(config)).eval()


@pytest.mark.parametrize("space_file", ["spaces/sr4x/resnet.yaml", "spaces/sr4x/inception.yaml",
                                        "spaces/sr4x/agd.yaml", "spaces/sr4x/teacher.yaml"])
def test_tiled_equals_whole_at_odd_sizes(root, space_file):
    module = generator(str(root / space_file))
    geo = geometry(module, 3)
    assert geo.multiple == 4 and geo.tileable and geo.halo % 4 == 0
    x = torch.rand(3, 157, 203, generator=torch.Generator().manual_seed(1)) * 2 - 1
    whole = run_image(module, x, geo=geo)
    assert whole.shape == x.shape
    for tile in (48, 64):  # tiles much smaller than the image: many seams, edges and corners
        tiled = run_image(module, x, tile=tile, geo=geo)
        assert (tiled - whole).abs().max() < 1e-4


def test_a_halo_smaller_than_the_receptive_field_would_show(root):
    """The check above can fail: with no halo the seams differ."""
    from dataclasses import replace

    module = generator(str(root / "spaces/sr4x/teacher.yaml"))
    # A trained-looking generator: random weights with a residual close to zero would hide the seams.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(3, 120, 120) * 2 - 1
    geo = geometry(module, 3)
    whole = run_image(module, x, geo=geo)
    assert (run_image(module, x, tile=48, geo=replace(geo, halo=4)) - whole).abs().max() > 1e-3


def test_instance_norm_networks_run_whole(root, tmp_path):
    text = (root / "tests/spaces/tiny_resnet.yaml").read_text()
    assert "norm: instance" in text
    module = generator(str(root / "tests/spaces/tiny_resnet.yaml"))
    geo = geometry(module, 3)
    assert not geo.tileable
    x = torch.rand(3, 64, 96) * 2 - 1
    assert torch.equal(run_image(module, x, tile=32, geo=geo), run_image(module, x, geo=geo))
