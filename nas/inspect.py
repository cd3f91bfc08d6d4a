"""``python -m nas.inspect``: MACs (both conventions) and parameters of a config or a checkpoint."""

from __future__ import annotations

import json

from evaluators.macs import count_macs, format_macs
from nas.checkpoint import load_generator
from nas.cli import Parser, parse_resolution, run
from spaces.errors import UserError
from spaces.space import CONVENTIONS, load_space

CONVENTION_NOTES = {
    "torchprofile": "convention of the GAN Compression / CAT tables",
    "fvcore": "transposed convs per input pixel, norms counted",
}


def build_parser() -> Parser:
    p = Parser(prog="python -m nas.inspect", description=__doc__)
    p.add_argument("--space", default="resnet", help="resnet | inception | agd | unet | PATH.yaml (default resnet)")
    p.add_argument("--config", default="max", help="max | min | a config string such as 16_16_32_16_32_32_16_16")
    p.add_argument("--teacher", metavar="CKPT", help="inspect a generator checkpoint instead of --space/--config")
    p.add_argument("--resolution", help="HxW or one side (default: the space's reference resolution, 256)")
    p.add_argument("--trace", action="store_true", help="also count with fvcore and torchprofile on the built module")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


# Largest side --trace runs the network at (its activations at 8192x8192 would take tens of GB).
MAX_TRACE = 2048


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.teacher:
        loaded = load_generator(args.teacher)
        space, config, source = loaded.space, loaded.config, args.teacher
    else:
        space = load_space(args.space)
        config, source = space.decode(args.config), space.spec.file
    h, w = parse_resolution(args.resolution) if args.resolution else (space.resolution, space.resolution)
    cost = space.cost(config, (h, w))
    macs = {c: getattr(cost, c) for c in CONVENTIONS}
    report = {
        "space": space.name, "family": space.family, "source": source, "config": space.encode(config),
        "resolution": [h, w], "macs": macs, "params": cost.params, "space_size": space.size,
    }
    if args.trace:
        if max(h, w) > MAX_TRACE:
            raise UserError(f"--trace runs the network on one {h}x{w} image; trace at most {MAX_TRACE}x{MAX_TRACE} (the "
                            "analytic counts above need no run and scale exactly)")
        module = space.build(config)
        report["traced_macs"] = {c: count_macs(module, h, w, convention=c, in_channels=space.spec.in_channels)
                                 for c in CONVENTIONS}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"space       {space.name} ({space.family}, {source}), {space.size:.3g} configs")
    print(f"config      {report['config']}")
    print(f"resolution  {h}x{w}, one image")
    for c in CONVENTIONS:
        traced = f"  [traced: {format_macs(report['traced_macs'][c])}]" if args.trace else ""
        print(f"MACs        {format_macs(macs[c]):>8} {c:<12} ({macs[c]:,}; {CONVENTION_NOTES[c]}){traced}")
    print(f"params      {cost.params / 1e6:>7.3f}M ({cost.params:,})")
    return 0


if __name__ == "__main__":
    run(main)
