"""dmask (DMAD): the smooth-step mask, the in-band penalty, the bound schedule, and the method end to end."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from nas.methods.dmask import bound_at, mask_penalty, mask_updates, soft_mask
from student_check import applies_to_a_photo, run_trial, tiny_method


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
    assert float(mask_penalty(w, 0.0).detach()) == 0.0


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


def test_co_attention_targets_average_in_the_discriminator_when_one_is_given():
    from nas.discriminator import PatchDiscriminator
    from nas.distill import PointDistiller, attention_map
    from spaces.space import load_space

    space = load_space("tests/spaces/tiny_inception.yaml")
    torch.manual_seed(0)
    student, teacher = space.build(space.min_config()), space.build(space.max_config())
    x = torch.rand(2, 3, 32, 32)
    plain = PointDistiller(student, teacher, "attention")
    out = student(x)
    with torch.no_grad():
        teacher(x)
    expected = sum(torch.nn.functional.mse_loss(attention_map(s), attention_map(t))
                   for s, t in zip(plain._student.outputs, plain._teacher.outputs))
    assert float(plain.loss(out).detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    with_d = PointDistiller(student, teacher, "attention", discriminator=PatchDiscriminator(3, ndf=8))
    out = student(x)
    with torch.no_grad():
        teacher(x)
    loss = with_d.loss(out)
    assert torch.isfinite(loss) and abs(float(loss.detach()) - float(expected.detach())) > 1e-6
    loss.backward()  # the student's features get gradients; the discriminator's target does not
    assert any(p.grad is not None for p in student.parameters())


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


def dmask_method(tiny_models, budget: float, **options):
    teacher, supernet = tiny_models
    defaults = dict(supernet=str(supernet), search_steps=12, finetune_steps=8, checkpoint_every=4, batch_size=2,
                    crop=32, mask_lr=0.05)
    return tiny_method("dmask", teacher, "tests/spaces/tiny_inception.yaml", budget, {**defaults, **options})


def test_a_dmask_trial_that_never_reaches_its_target_fails_saying_what_it_reached(tiny_models):
    from nas.methods.base import Failed

    method = dmask_method(tiny_models, 1.77e6, mask_weight=0.0)  # no push: half the channels survive b = 0
    trial, out = run_trial(method, 1.77e6)
    assert isinstance(out, Failed) and trial.finetune is None
    assert out.message.startswith("dmask: the masks never brought the network under the target 0.00177G MACs")
    reached = trial.objective.reached
    assert reached > 1.77e6 and f"{reached / 1e9:.4g}G" in out.message


def test_a_dmask_trial_stopped_in_either_phase_resumes_to_the_same_student(tmp_path, tiny_models):
    """Stopped during the mask search and again during the fine-tune, then resumed: the student equals
    that of a trial that never stopped (masks, frozen keep-set, optimizer and schedule all restored)."""
    from nas.methods.base import Candidate

    method = dmask_method(tiny_models, 3e6)
    straight, done = run_trial(method, 3e6)
    assert isinstance(done, Candidate) and done.cost.torchprofile <= 3e6
    folder = tmp_path / "trial"
    folder.mkdir()
    first, _ = run_trial(method, 3e6, folder, until=8)  # in the mask search
    assert first.finetune is None and (folder / "search.pth").is_file()
    second, _ = run_trial(method, 3e6, folder, until=16)  # in the fine-tune
    assert second.finetune is not None and (folder / "checkpoint.pth").is_file()
    resumed, again = run_trial(method, 3e6, folder)
    assert isinstance(again, Candidate) and again.config == done.config
    a, b = straight.finetune.student.state_dict(), resumed.finetune.student.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())
