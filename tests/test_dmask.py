"""dmask (DMAD): the smooth-step mask, the in-band penalty, the bound schedule, and the method end to end."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from nas.methods.dmask import bound_at, mask_penalty, mask_updates, soft_mask
from student_check import applies_to_a_photo


def test_mask_values_across_the_band():
    b = 0.8
    w = torch.tensor([-b, -b / 2, 0.0, b / 2, b, -2 * b, 2 * b])
    assert soft_mask(w, b).tolist() == pytest.approx([0.0, 0.125, 0.5, 0.875, 1.0, 0.0, 1.0])
    assert soft_mask(torch.tensor([-0.1, 0.0, 0.1]), 0.0).tolist() == [0.0, 0.5, 1.0]  # a step at b = 0


def test_the_mask_gradient_is_the_closed_form():
    b = 0.6
    w = torch.tensor([-0.9, -0.5, -0.2, 0.1, 0.4, 0.59, 0.9], requires_grad=True)
    soft_mask(w, b).sum().backward()
    x = w.detach()
    closed = torch.where(x.abs() >= b, torch.zeros_like(x),
                         torch.where(x <= 0, (1 + x / b) / b, (1 - x / b) / b))
    assert torch.allclose(w.grad, closed, atol=1e-6)
    assert w.grad[0] == 0 and w.grad[-1] == 0  # zero outside the band


def test_the_penalty_counts_only_weights_in_the_band():
    b = 0.5
    w = torch.tensor([-0.7, -0.25, 0.0, 0.3, 0.6], requires_grad=True)
    penalty = mask_penalty(w, b)
    assert float(penalty.detach()) == pytest.approx((-0.25 + b) + (0.0 + b) + (0.3 + b))
    penalty.backward()
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert float(mask_penalty(w, 0.0)) == 0.0


@pytest.mark.parametrize("steps, most", [(400, 150), (1000, 150), (40, 150), (12, 5)])
def test_the_bound_schedule_has_k_updates_and_ends_at_zero(steps, most):
    k = mask_updates(steps, most)
    assert k == min(most, int(0.75 * steps) // 2)
    bounds = [bound_at(step, steps, most) for step in range(steps)]
    changes = [step for step in range(1, steps) if bounds[step][0] != bounds[step - 1][0]]
    assert len(changes) == k and bounds[0][0] == 1.0 and bounds[-1][0] == 0.0
    assert all(b - a >= 2 for a, b in zip([0, *changes], changes))  # at least two steps per update
    assert changes[-1] <= 0.75 * steps  # the bound is 0 for the last quarter
    values = [bounds[s][0] for s in changes]
    assert values == pytest.approx([1 - (i / k) ** (1 / 3) for i in range(1, k + 1)])


TINY_DMASK = ["--search-steps", "12", "--finetune-steps", "2", "--checkpoint-every", "4", "--batch-size", "2",
              "--crop", "32", "--mask-lr", "0.05"]


@pytest.mark.xdist_group("ray")
def test_a_dmask_search_writes_feasible_rows_and_a_student_that_applies(tmp_path, tiny_models):
    teacher, supernet = tiny_models
    out = tmp_path / "run"
    search = subprocess.run(
        [sys.executable, "-m", "nas.search", "--method", "dmask", "--supernet", str(supernet), "--teacher",
         str(teacher), "--budget", "3M", "--trials", "2", "--out", str(out), "--no-progress", *TINY_DMASK],
        capture_output=True, text=True, timeout=600)
    assert search.returncode == 0, search.stderr[-2000:]
    table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    assert len(table) == 2 and (table["status"] == "ok").all() and table["feasible"].all(), table.to_string()
    for _, row in table.iterrows():
        assert row["macs_torchprofile"] <= json.loads(row["params_json"])["target"]
        assert row["cpu_seconds"] > 0 and row["seconds"] > 0
    assert applies_to_a_photo(out / "best" / "model.pth", tmp_path) == (96, 96)


@pytest.mark.xdist_group("ray")
def test_a_dmask_trial_that_never_reaches_its_target_is_a_failed_row(tmp_path, tiny_models):
    teacher, supernet = tiny_models
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "nas.search", "--method", "dmask", "--supernet", str(supernet), "--teacher",
         str(teacher), "--budget", "1.77M", "--trials", "1", "--out", str(out), "--no-progress", *TINY_DMASK,
         "--mask-weight", "0"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 1 and table["status"].iloc[0] == "error"
    assert table["error"].iloc[0].startswith("dmask: the masks never brought the network under the target 0.00177G")
