"""agd (AutoGAN-Distiller): relaxed MACs against exact ones, the straight-through sample, lambda's rule,
the search network against derived networks, the image split, and the method end to end."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nas.methods.agd import (LAMBDA_RANGE, Architecture, Choice, SearchNetwork, adapt_lambda, one_hot,
                             split_by_image, straight_through)
from spaces.relaxed import SAMPLING_SITES, AgdFactors, RelaxedMacs
from spaces.space import load_space
from spaces.supernet import Supernet
from student_check import applies_to_a_photo, run_trial, tiny_method

ROOT = Path(__file__).resolve().parents[1]
TINY_AGD = ROOT / "tests/spaces/tiny_agd.yaml"
SPACES = [ROOT / "spaces/sr4x/agd.yaml", TINY_AGD, "agd"]


@pytest.mark.parametrize("path", SPACES, ids=["sr4x", "tiny", "builtin"])
def test_relaxed_macs_of_one_hot_choices_are_the_exact_macs(path):
    space = load_space(str(path))
    relaxed, rng = RelaxedMacs(space), random.Random(0)
    configs = [space.max_config(), space.min_config()] + [space.sample(rng) for _ in range(30)]
    for config in configs:
        choice = one_hot(relaxed.factors, config)
        assert float(relaxed(choice.sites, choice.ops, choice.widths)) == space.macs(config), space.encode(config)
    fvcore = RelaxedMacs(space, "fvcore")
    choice = one_hot(relaxed.factors, configs[2])
    assert float(fvcore(choice.sites, choice.ops, choice.widths)) == space.macs(configs[2], convention="fvcore")


def sample_config(f: AgdFactors, p: Choice, gen: torch.Generator) -> dict:
    sites = {name: int(torch.multinomial(p.sites[name], 1, generator=gen)) for name in SAMPLING_SITES}
    ops = torch.multinomial(p.ops, 1, generator=gen).squeeze(1).tolist()
    widths = torch.multinomial(p.widths, 1, generator=gen).squeeze(1).tolist()
    return f.config(sites, ops, widths)


@pytest.mark.parametrize("path", SPACES[:2], ids=["sr4x", "tiny"])
def test_relaxed_macs_of_soft_choices_are_the_mean_of_sampled_configs(path):
    space = load_space(str(path))
    relaxed = RelaxedMacs(space)
    torch.manual_seed(0)
    arch = Architecture(relaxed.factors)
    with torch.no_grad():
        for p in arch.parameters():
            p.normal_(0, 1.5)
    p = arch.probabilities()
    probs = Choice({k: v.detach() for k, v in p.sites.items()}, p.ops.detach(), p.widths.detach())
    expected = float(relaxed(probs.sites, probs.ops, probs.widths))
    gen = torch.Generator().manual_seed(0)
    mean = sum(space.macs(sample_config(relaxed.factors, probs, gen)) for _ in range(20_000)) / 20_000
    assert expected == pytest.approx(mean, rel=0.01)
    with torch.no_grad():  # a different point: not a coincidence of one
        uniform = Architecture(relaxed.factors).probabilities()
        assert float(relaxed(uniform.sites, uniform.ops, uniform.widths)) != pytest.approx(expected, rel=0.01)


def test_the_cost_gradient_favours_the_cheapest_operator_and_narrower_widths():
    space = load_space(str(ROOT / "spaces/sr4x/agd.yaml"))
    relaxed = RelaxedMacs(space)
    arch = Architecture(relaxed.factors)
    p = arch.probabilities()
    relaxed(p.sites, p.ops, p.widths).backward()
    f = relaxed.factors
    skip = f.ops.index("skip")
    for layer in range(f.layers):
        grad = arch.ops.grad[layer]
        assert int(grad.argmin()) == skip  # descent raises skip's logit most
        assert grad[skip] < 0
        widths = arch.widths.grad[layer].tolist()
        assert widths == sorted(widths) and widths[0] < 0 < widths[-1]  # narrower widths gain
    for name in SAMPLING_SITES:
        grad = arch.sites[name].grad.tolist()
        assert grad == sorted(grad) and grad[0] < 0


def test_the_straight_through_sample_is_one_hot_forward_with_a_gradient_to_every_logit():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    sample = straight_through(logits, gen)
    assert sorted(sample.detach().flatten().tolist()) == [0.0] * 6 + [1.0] * 2
    assert (sample.detach().sum(-1) == 1).all()
    (sample * torch.arange(4.0)).sum().backward()
    assert (logits.grad != 0).all()
    again = straight_through(logits.detach(), torch.Generator().manual_seed(3))
    assert torch.equal(again, sample.detach())  # a function of the seed


def test_lambda_doubles_over_the_target_halves_under_the_band_and_holds_inside():
    assert adapt_lambda(0.5, 1.01e9, 1e9, 0.1) == 1.0
    assert adapt_lambda(0.5, 0.89e9, 1e9, 0.1) == 0.25
    assert adapt_lambda(0.5, 0.95e9, 1e9, 0.1) == 0.5
    assert adapt_lambda(0.5, 1e9, 1e9, 0.1) == 0.5  # at the target is not over it
    low, high = LAMBDA_RANGE
    assert adapt_lambda(low, 0.5e9, 1e9, 0.1) == low and adapt_lambda(high, 2e9, 1e9, 0.1) == high
    value = 1e-3
    for _ in range(200):  # a long run under the band, then over the target: it turns within ~30 steps
        value = adapt_lambda(value, 0.5e9, 1e9, 0.1)
    for _ in range(30):
        value = adapt_lambda(value, 2e9, 1e9, 0.1)
    assert value >= 1.0


@pytest.mark.parametrize("path", [TINY_AGD, ROOT / "spaces/sr4x/agd.yaml"], ids=["tiny-instance-norm", "sr4x"])
def test_one_hot_choices_run_exactly_the_derived_network(path):
    space = load_space(str(path))
    torch.manual_seed(0)
    supernet = Supernet(space)
    with torch.no_grad():  # the head starts at zero (global residual): give it weights so outputs differ
        supernet.net.head[1].weight.normal_(0, 0.05)
        supernet.net.head[1].bias.normal_(0, 0.05)
    network = SearchNetwork(supernet.eval())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    rng = random.Random(1)
    configs = [space.max_config(), space.min_config()] + [space.sample(rng) for _ in range(8)]
    ops_seen = set()
    with torch.no_grad():
        for config in configs:
            ops_seen |= {str(config[f"layer{i}"]).rstrip("0123456789") for i in range(space.spec.layers)}
            derived = supernet.extract(config).eval()(x)
            searched = network(x, one_hot(network.factors, config))
            assert (derived - searched).abs().max() < 1e-5, space.encode(config)
    assert ops_seen == {"conv", "res", "sep", "skip"}
    assert (supernet.extract(configs[0]).eval()(x) - supernet.extract(configs[1]).eval()(x)).abs().max() > 1e-3


def test_the_image_split_keeps_stereo_pairs_together_and_uses_only_training_images():
    from nas.data import load_task

    task = load_task("sr4x")
    a, b = split_by_image(task.train, seed=0)
    assert sorted(a + b) == list(range(len(task.train))) and not set(a) & set(b)
    names = [{task.train.names[i] for i in half} for half in (a, b)]
    pair = {"motorcycle_left", "motorcycle_right"}
    assert any(pair <= half for half in names)
    assert abs(len(a) - len(b)) <= 2
    assert not (names[0] | names[1]) & set(task.val.names + task.test.names)


@pytest.fixture(scope="module")
def tiny_agd_supernet(tiny_models, tmp_path_factory):
    from nas import train

    teacher, _ = tiny_models
    out = tmp_path_factory.mktemp("agd_supernet")
    train.main(["supernet", "--space", str(TINY_AGD), "--teacher", str(teacher), "--out", str(out), "--steps", "4",
                "--batch-size", "2", "--crop", "32", "--eval-every", "4", "--checkpoint-every", "4", "--no-progress",
                "--device", "cpu"])
    return teacher, out / "checkpoint.pth"


def agd_method(models, budget: float, **options):
    teacher, supernet = models
    defaults = dict(supernet=str(supernet), search_steps=8, finetune_steps=4, checkpoint_every=4, batch_size=2,
                    crop=32)
    return tiny_method("agd", teacher, TINY_AGD, budget, {**defaults, **options})


def test_the_cost_term_moves_the_search_to_cheaper_operators(tiny_agd_supernet):
    """With a target near the smallest config, the search lowers the expected MACs and raises skip's
    probability; with the cost term at a negligible weight, the same steps lower them far less."""
    space = load_space(str(TINY_AGD))
    low = space.macs(space.min_config()) * 1.2

    def search(cost_weight: float):
        method = agd_method(tiny_agd_supernet, low, search_steps=12, cost_weight=cost_weight, arch_lr=0.2)
        trial = method.start({"target": low})
        objective = trial.search.objective
        with torch.no_grad():
            before = float(objective.relaxed_cost(objective.architecture.probabilities()))
        trial.search.advance(12, evaluate=False)
        with torch.no_grad():
            after = objective.architecture.probabilities()
            skip = objective.network.factors.ops.index("skip")
            return before, float(objective.relaxed_cost(after)), float(after.ops[:, skip].mean()), objective

    before, after, skip, _ = search(1.0)
    assert after < 0.8 * before
    assert skip > 0.25 + 0.1  # from uniform over four operators
    _, after_without, _, _ = search(1e-12)
    assert after < after_without - 0.1 * before


def test_a_trial_ends_under_its_target_projecting_when_the_search_did_not_get_there(tiny_agd_supernet):
    from nas.methods.base import Candidate

    space = load_space(str(TINY_AGD))
    target = space.macs(space.min_config()) * 1.5
    method = agd_method(tiny_agd_supernet, target, search_steps=2, cost_weight=1e-9)  # the search cannot get there
    trial = method.start({"target": target})
    while not isinstance(out := trial.step(), Candidate):
        pass
    assert out.cost.torchprofile <= target
    assert out.extra["projected"] is True and out.extra["argmax_macs"] > target
    assert out.extra["search_cpu_s"] > 0


def test_a_trial_stopped_in_either_phase_resumes_to_the_same_student(tmp_path, tiny_agd_supernet):
    from nas.methods.base import Candidate

    space = load_space(str(TINY_AGD))
    target = space.macs(space.max_config()) * 0.6
    method = agd_method(tiny_agd_supernet, target)

    def run(folder=None, until=None):
        return run_trial(method, target, folder, until)

    straight, done = run()
    assert isinstance(done, Candidate) and done.cost.torchprofile <= target
    folder = tmp_path / "trial"
    folder.mkdir()
    first, _ = run(folder, until=4)
    assert first.finetune is None and (folder / "search.pth").is_file()
    run(folder, until=10)
    resumed, again = run(folder)
    assert isinstance(again, Candidate) and again.config == done.config
    a, b = straight.finetune.student.state_dict(), resumed.finetune.student.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_an_agd_search_writes_feasible_rows_and_a_student_that_applies(tmp_path, tiny_agd_supernet):
    teacher, supernet = tiny_agd_supernet
    space = load_space(str(TINY_AGD))
    budget = space.macs(space.max_config()) * 0.6
    out = tmp_path / "run"
    search = subprocess.run(
        [sys.executable, "-m", "nas.search", "--method", "agd", "--supernet", str(supernet), "--teacher", str(teacher),
         "--budget", str(int(budget)), "--trials", "2", "--out", str(out), "--no-progress", "--search-steps", "4",
         "--finetune-steps", "4", "--checkpoint-every", "4", "--batch-size", "2", "--crop", "32"],
        capture_output=True, text=True, timeout=600)
    assert search.returncode == 0, search.stderr[-2000:]
    table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    assert len(table) == 2 and (table["status"] == "ok").all() and table["feasible"].all(), table.to_string()
    for _, row in table.iterrows():
        assert row["macs_torchprofile"] <= json.loads(row["params_json"])["target"]
        details = json.loads(row["details_json"])
        assert isinstance(details["projected"], bool) and details["search_cpu_s"] > 0
        assert details["projected"] == (details["argmax_macs"] > json.loads(row["params_json"])["target"])
    assert applies_to_a_photo(out / "best" / "model.pth", tmp_path) == (96, 96)


def test_agd_refuses_other_families_in_one_line(tmp_path, tiny_models):
    teacher, supernet = tiny_models  # an inception supernet
    proc = subprocess.run([sys.executable, "-m", "nas.search", "--method", "agd", "--supernet", str(supernet),
                           "--teacher", str(teacher), "--budget", "3M", "--trials", "1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --method agd searches agd spaces (operators and widths per layer); space 'tiny_inception' is of "
        "the inception family: use --space agd"]


def test_a_forward_under_a_sampled_choice_sends_gradients_to_operator_and_width_logits():
    space = load_space(str(TINY_AGD))
    torch.manual_seed(0)
    supernet = Supernet(space).train()
    with torch.no_grad():  # a zero head (global residual) would hide every other layer
        supernet.net.head[1].weight.normal_(0, 0.05)
    network = SearchNetwork(supernet)
    arch = Architecture(network.factors)
    choice = arch.sample(torch.Generator().manual_seed(0))
    out = network(torch.rand(2, 3, 32, 32), choice)
    F.l1_loss(out, torch.zeros_like(out)).backward()
    assert arch.widths.grad is not None and (arch.widths.grad != 0).any()
    assert arch.ops.grad is not None and (arch.ops.grad != 0).any()
