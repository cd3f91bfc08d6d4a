"""prune's bisection at the papers' published budgets, architecture only (no training).

    python bench/published_budgets.py [--seeds 3]

CAT's 2.6G on the max config of ``spaces/inception.yaml`` (59.3G) and DMAD's 3.97G on the original
56.8G ResnetGenerator (the ``block: plain`` copy of ``spaces/resnet.yaml``), each with affine batch
norms whose gammas are drawn at random (PyTorch initialises them all to 1, which would tie). Prints,
per seed, the exact MACs the bisection lands on, how close that is to the target, and the MACs of
the config the next lower threshold would give (above the target: the bisection kept as much as
the space's choices allow). ``tests/test_prune.py`` asserts the same on seed 0.
"""

from __future__ import annotations

import argparse

import torch

from nas.methods.prune import importance, prune_config
from spaces.channels import channel_groups, widest_generator
from spaces.space import BUILTIN_DIR, SearchSpace
from nas.cli import Parser, at_least, run

PUBLISHED = (("inception", 2.6e9, {}, "CAT, horse2zebra"),
             ("resnet", 3.97e9, {"block: mobile": "block: plain"}, "DMAD, horse2zebra"))


def published_space(name: str, **changes: str) -> SearchSpace:
    """A copy of a full-size built-in space with affine batch norms (CAT prunes by their gammas)."""
    text = (BUILTIN_DIR / f"{name}.yaml").read_text().replace("norm: instance", "norm: batch")
    for old, new in changes.items():
        text = text.replace(old, new)
    return SearchSpace.from_text(text, source=f"spaces/{name}.yaml", name=f"{name}_batch")


def random_gammas(space: SearchSpace, seed: int = 0) -> torch.nn.Module:
    """The widest generator of ``space`` with every batch norm's gamma drawn uniformly from [0, 1)."""
    network = widest_generator(space, "cpu")
    generator = torch.Generator().manual_seed(seed)
    for m in network.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=generator)
    return network


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=at_least(1), default=3)
    args = p.parse_args(argv)
    for name, target, changes, source in PUBLISHED:
        space = published_space(name, **changes)
        groups = channel_groups(space)
        full = space.macs(space.max_config())
        print(f"{name} ({source}): {full / 1e9:.2f}G -> target {target / 1e9:.2f}G ({full / target:.1f}x)")
        for seed in range(args.seeds):
            scores, criterion = importance(random_gammas(space, seed), groups)
            pruned = prune_config(space, groups, scores, target)
            print(f"  seed {seed}: {pruned.macs / 1e9:.3f}G ({100 * pruned.macs / target:.1f}% of the target, "
                  f"importance {criterion}); the next lower threshold: {pruned.next_macs / 1e9:.3f}G; "
                  f"config {space.encode(pruned.config)}")


if __name__ == "__main__":
    run(main)
