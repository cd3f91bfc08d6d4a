"""The fine-tune default: the README's table is the kept output of bench/ofa_finetune.py, and the default
is the measured step count it says."""

import re
from pathlib import Path

from nas.finetune import FINETUNE_LR
from nas.methods.ofa import FINETUNE_STEPS

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "bench" / "results" / "ofa_finetune.txt"


def kept_shares() -> dict[str, dict[int, int]]:
    """subnet ('resnet 1/10') -> steps -> val share in %, from the runs at the default lr."""
    shares: dict[str, dict[int, int]] = {}
    subnet, lr = None, None
    for line in KEPT.read_text().splitlines():
        if head := re.match(r"(\w+ 1/\d+): ", line):
            subnet = head.group(1)
        elif rate := re.match(r"fine-tuning learning rate ([\d.e-]+)", line):
            lr = float(rate.group(1))
        elif (row := re.match(r"\s+(\d+)\s+[\d.]+\s+(-?\d+)%\s+[\d.]+$", line)) and lr == FINETUNE_LR:
            shares.setdefault(subnet, {})[int(row.group(1))] = int(row.group(2))
    return shares


def test_readme_fine_tune_table_is_the_kept_runs_and_the_default_is_measured():
    shares = kept_shares()
    assert len(shares) == 6 and all(0 in by_steps and FINETUNE_STEPS in by_steps for by_steps in shares.values())
    readme = (ROOT / "README.md").read_text()
    columns = [300, 500, 800, 1200]  # the README's (inception 1/10 also has 1000 steps, left out there)
    for subnet, by_steps in shares.items():
        cells = r"\s*\|\s*".join(f"{by_steps[s]}%" if s in by_steps else "" for s in [0, *columns])
        assert re.search(rf"\| {re.escape(subnet)} \| [\d.]+G \| {cells} \|", readme), subnet
    # the mean change over the inherited weights, per step count measured on all six subnets
    means = {s: sum(b[s] - b[0] for b in shares.values()) / len(shares) for s in columns
             if all(s in b for b in shares.values())}
    assert max(means, key=means.get) == FINETUNE_STEPS
    row = "| mean change | | | " + " | ".join(f"{means[s]:+.1f}" for s in sorted(means)) + " |"
    assert row in readme
    assert f"(`--finetune-steps`, default {FINETUNE_STEPS};" in readme
