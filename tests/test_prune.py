"""prune (CAT): kernel alignment, channel importance, the bisection to a MACs target, and the method
end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from nas.distill import kernel_alignment
from nas.methods.prune import importance, prune_config
from spaces.channels import channel_groups, widest_generator
from spaces.space import load_space
from student_check import applies_to_a_photo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from published_budgets import PUBLISHED, published_space, random_gammas  # noqa: E402


def test_kernel_alignment_checks_from_cat():
    x, y = torch.eye(2), torch.diag(torch.tensor([1.0, 2.0]))
    assert float(kernel_alignment(x, y)) == pytest.approx(5 / 34 ** 0.5, abs=1e-6)  # 0.857493
    torch.manual_seed(0)
    a, b = torch.randn(6, 20), torch.randn(6, 12)
    q, _ = torch.linalg.qr(torch.randn(20, 20))
    assert float(kernel_alignment(a @ q, b)) == pytest.approx(float(kernel_alignment(a, b)), abs=1e-5)
    assert float(kernel_alignment(3.0 * a, 0.2 * b)) == pytest.approx(float(kernel_alignment(a, b)), abs=1e-6)
    assert float(kernel_alignment(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(kernel_alignment(a + 5.0, b)) - float(kernel_alignment(a, b))) > 1e-2  # not shift-invariant
    assert float(kernel_alignment(torch.randn(4, 3, 5, 5), torch.randn(4, 7, 5, 5))) < 1.0  # any widths
    with pytest.raises(ValueError, match="batch of at least 2"):
        kernel_alignment(a[:1], b[:1])


@pytest.mark.parametrize("name, target, changes, source", PUBLISHED)  # CAT's 2.6G, DMAD's 3.97G
def test_the_bisection_lands_at_or_just_under_the_published_budgets(name, target, changes, source):
    space = published_space(name, **changes)
    groups = channel_groups(space)
    scores, criterion = importance(random_gammas(space), groups)
    assert criterion == "gamma"
    pruned = prune_config(space, groups, scores, target)
    assert pruned.macs == space.macs(pruned.config) <= target
    # the next lower threshold changes the rounded config, and that config would exceed the target
    assert pruned.next_macs is not None and pruned.next_macs > target
    lower = torch.unique(torch.cat(list(scores.values())))
    lower = lower[lower < pruned.threshold].max()
    counts = {n: int((s >= lower).sum()) for n, s in scores.items()}
    from spaces.channels import derive_config

    assert space.macs(derive_config(space, groups, counts)) == pruned.next_macs
    assert pruned.macs > 0.8 * target  # close to the target, as the space's choices allow


def test_importance_l1_is_the_norm_of_output_filters_and_auto_measures_activations_without_norms():
    space = load_space("tests/spaces/tiny_inception.yaml")  # instance norms: not affine
    network = widest_generator(space, "cpu")
    groups = channel_groups(space)
    scores, criterion = importance(network, groups, "l1")
    assert criterion == "l1"
    assert torch.allclose(scores["stem"], network.stem[1].weight.abs().sum((1, 2, 3)))
    assert torch.allclose(scores["up1"], network.up1[0].weight.abs().sum((0, 2, 3)))  # transposed: dim 1 is out
    assert torch.allclose(scores["trunk"], network.down2[0].weight.abs().sum((1, 2, 3)))
    x = torch.rand(2, 3, 32, 32)
    scores, criterion = importance(network, groups, "auto", x)
    assert criterion == "activation"  # no affine norms: a channel's mean output after its ReLU
    with torch.no_grad():
        stem = network.stem(x)
    assert torch.allclose(scores["stem"], stem.mean((0, 2, 3)))
    from spaces.errors import UserError

    with pytest.raises(UserError, match="--importance gamma needs an affine norm"):
        importance(network, groups, "gamma")


def test_a_target_below_the_smallest_pruned_network_fails_clearly():
    space = load_space("tests/spaces/tiny_inception.yaml")
    groups = channel_groups(space)
    scores, _ = importance(widest_generator(space, "cpu"), groups, "l1")
    from spaces.errors import UserError

    with pytest.raises(UserError, match="prune: keeping only the most important channel"):
        prune_config(space, groups, scores, 1e3)


TINY_PRUNE = ["--steps", "4", "--checkpoint-every", "2", "--batch-size", "2", "--crop", "32"]


@pytest.mark.xdist_group("ray")
def test_a_prune_search_writes_feasible_rows_and_a_student_that_applies(tmp_path, tiny_models, tiny_source):
    teacher, _ = tiny_models
    out = tmp_path / "run"
    search = subprocess.run(
        [sys.executable, "-m", "nas.search", "--method", "prune", "--source", str(tiny_source), "--teacher",
         str(teacher), "--budget", "4M", "--trials", "2", "--out", str(out), "--no-progress", *TINY_PRUNE],
        capture_output=True, text=True, timeout=600)
    assert search.returncode == 0, search.stderr[-2000:]
    table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    assert len(table) == 2 and (table["status"] == "ok").all() and table["feasible"].all()
    for _, row in table.iterrows():
        target = json.loads(row["params_json"])["target"]
        assert row["macs_torchprofile"] <= target and row["cpu_seconds"] > 0 and row["seconds"] > 0
    assert applies_to_a_photo(out / "best" / "model.pth", tmp_path) == (96, 96)  # sr4x: four times the input
    info = json.loads((out / "run.json").read_text())
    assert info["options"]["method"] == "prune" and info["best"]["config"] in set(table["config"])
