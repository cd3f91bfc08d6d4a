"""nas.search end to end on tiny real models: Ray Tune trials, Optuna, the budget, results, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import torch

from nas.methods.ofa import OfaOptions
from nas.results import ResultsTable
from spaces import load_space

pytestmark = pytest.mark.xdist_group("ray")  # one Ray instance at a time on two cores

SPACE = "tests/spaces/tiny_inception.yaml"


def search_cmd(tiny_models, out, *extra):
    """A search on the tiny models; its best student is exported without fine-tuning unless ``extra`` says."""
    teacher, supernet = tiny_models
    return [sys.executable, "-m", "nas.search", "--space", SPACE, "--teacher", str(teacher), "--supernet",
            str(supernet), "--out", str(out), "--no-progress", "--finetune-steps", "0", *extra]


def run(cmd, env=None, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_search_writes_table_front_run_and_best_student(tiny_run):
    out, done = tiny_run
    table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    assert len(table) == 6 and table["trial_id"].is_unique and (table["status"] == "ok").all()
    assert (table["macs_torchprofile"] <= 4_000_000).all() and table["feasible"].all()
    space = load_space(SPACE)
    for _, row in table.iterrows():  # the recorded MACs are the config's
        assert space.macs(space.decode(row["config"])) == row["macs_torchprofile"]
        assert row["psnr"] > 10 and row["latency_ms"] > 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["versions"]["ray"] and "--budget 4M" in info["command"]
    assert info["rejected"] > 0  # 4M is below much of this space: samples over it were never evaluated
    best = table.loc[table["quality"].idxmax()]
    assert info["best"]["config"] == best["config"]
    exported = json.loads((out / "best" / "export.json").read_text())
    assert exported["config"] == best["config"] and exported["finetune_steps"] == 3
    # inherited (the row) and fine-tuned (best/) are both judged on val; the tiny teacher is not 0.5 dB over
    # bicubic, so there is no share to report
    assert info["best"]["inherited"]["psnr"] == pytest.approx(best["psnr"])
    assert info["best"]["finetuned"]["steps"] == 3 and info["best"]["finetuned"]["psnr"] > 10
    assert info["best"]["finetuned"]["psnr"] != info["best"]["inherited"]["psnr"]
    assert info["quality_metric"] == "psnr" and "share" in table.columns and table["share"].isna().all()
    assert info["teacher_val"]["psnr"] - info["baseline_val_psnr"] < 0.5
    html = (out / "pareto.html").read_text()
    assert "Pareto front" in html and "budget 4M" in html and best["config"] in html
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 == len(study.trials)  # the run's study holds evaluated trials
    assert {t.user_attrs["config"] for t in complete} == set(table["config"])
    assert "Pareto front" in done.stdout and "best feasible" in done.stdout and "fine-tuned 3 steps" in done.stdout


def test_search_draws_its_front_members_on_the_probe_crops(tiny_run, tiny_models):
    """probes/: the crops' input, target and teacher once; for each front member (and no other trial) its output,
    which is the subnet's own (extracted from the supernet) on the same crops, and PSNRs that match the pictures."""
    import numpy as np
    from PIL import Image

    from nas.checkpoint import load_supernet
    from nas.data import load_task, to_uint8
    from nas.pareto import pareto_front
    from nas.probes import PROBE_COUNT, Probes

    out, _ = tiny_run
    probes = out / "probes"
    crops = json.loads((probes / "probes.json").read_text())["crops"]
    assert len(crops) == PROBE_COUNT
    table = pd.read_csv(out / "trials.csv", dtype={"config": str, "trial_id": str})
    front = pareto_front(table, budget=4_000_000)
    members = set(front.front_rows["trial_id"])
    assert {p.name for p in (probes / "trials").iterdir()} == members and len(members) < len(table)
    supernet, _ = load_supernet(tiny_models[1])
    crop_set = Probes.from_eval_set(load_task("sr4x").eval_set("val"), multiple=supernet.space.multiple)
    for trial_id in members:
        config = table.set_index("trial_id").loc[trial_id, "config"]
        record = json.loads((probes / "trials" / trial_id / "probe.json").read_text())
        assert record["config"] == config and len(record["psnr"]) == PROBE_COUNT
        subnet = supernet.extract(supernet.space.decode(config))
        for i in range(PROBE_COUNT):
            drawn = np.asarray(Image.open(probes / "trials" / trial_id / f"student_{i}.png"))
            with torch.no_grad():
                own = to_uint8(subnet.eval()(crop_set.inputs[i][None])[0])
            assert np.abs(drawn.astype(int) - own.astype(int)).max() <= 1
            target = np.asarray(Image.open(probes / f"target_{i}.png")).astype(float)
            psnr = 10 * np.log10(255.0 ** 2 / ((drawn - target) ** 2).mean())
            assert record["psnr"][i] == pytest.approx(psnr, abs=0.05)
            assert Image.open(probes / "trials" / trial_id / f"diff_{i}.png").size == drawn.shape[1::-1]
    beat = json.loads((out / "heartbeat.json").read_text())
    info = json.loads((out / "run.json").read_text())
    assert beat["pid"] > 0 and beat["host"] and info["status"] == "finished"
    # the reference is measured when the run starts, before any trial
    assert info["teacher_val"]["psnr"] > 10 and info["baseline_val_psnr"] > 10 and info["teacher_macs"] > 4e6


def test_failing_trials_are_retried_then_recorded(tmp_path, tiny_models):
    out = tmp_path / "run"
    done = run(search_cmd(tiny_models, out, "--budget", "30M", "--trials", "6", "--sampler", "random",
                          "--max-failures", "1"), env={"NAS_FAIL_CONFIG": "^4_"})
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    assert len(table) == 6
    failed = table[table["status"] == "error"]
    assert len(failed) and failed["config"].str.startswith("4_").all()
    assert failed["error"].str.contains("injected failure").all()
    assert (table[table["status"] == "ok"]["config"].str.startswith("8_")).all()


@pytest.mark.slow  # the default suite's time (README: tests)
def test_resume_after_the_driver_is_killed(tmp_path, tiny_models):
    out = tmp_path / "run"
    cmd = search_cmd(tiny_models, out, "--budget", "30M", "--trials", "8")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline:
        if out.exists() and len(ResultsTable(out / "trials.csv")) >= 2:  # rows of the CSV and its journal
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = ResultsTable(out / "trials.csv").frame()
    assert 2 <= len(before) < 8
    done = run(search_cmd(tiny_models, out, "--resume")[:3] + ["--out", str(out), "--resume", "--no-progress"])
    assert done.returncode == 0, done.stderr[-2000:]
    after = pd.read_csv(out / "trials.csv", dtype={"config": str})
    assert len(after) == 8 and after["trial_id"].is_unique
    kept = after.set_index("trial_id").loc[before["trial_id"]]
    assert (kept["config"].values == before["config"].values).all()  # nothing finished was lost or redone
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'optuna.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 8
    info = json.loads((out / "run.json").read_text())
    assert len(info["resumes"]) == 1 and info["status"] == "finished"


@pytest.mark.slow  # the default suite's time (README: tests)
def test_trials_lost_with_their_node_are_replaced_by_new_samples(tmp_path, tiny_models, monkeypatch, capsys):
    from dataclasses import replace

    from nas import search, tune_driver

    rounds, real_tune_trials = [], tune_driver.tune_trials

    def first_round_loses_two(method, options, table, records, **kwargs):
        # The first round finishes two trials fewer and reports them lost, as a node loss would.
        rounds.append(kwargs["experiment"])
        short = replace(options, trials=options.trials - 2) if len(rounds) == 1 else options
        result = real_tune_trials(method, short, table, records, **kwargs)
        return tune_driver.TuneRound(result.rejected, result.repaired, lost=2) if len(rounds) == 1 else result

    monkeypatch.setattr(tune_driver, "tune_trials", first_round_loses_two)
    teacher, supernet = tiny_models
    out = search.run_search(search.SearchOptions(space=SPACE, budget=30_000_000, teacher=str(teacher), trials=4,
                                                 out=str(tmp_path / "run"), progress=False,
                                                 method_options=OfaOptions(str(supernet), finetune_steps=0)))
    table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    assert rounds == ["tune-0", "tune-0-1"] and len(table) == 4 and (table["status"] == "ok").all()
    info = json.loads((out / "run.json").read_text())
    assert info["lost"] == 2 and info["status"] == "finished"
    assert "2 trials died with a lost worker node and were replaced by new samples" in capsys.readouterr().out


def died(message):
    """An ActorDiedError with Ray's wording; built like this (not from Ray's protobuf context) so
    that it pickles, as the errors Tune stores do."""
    from ray.exceptions import ActorDiedError

    error = ActorDiedError()
    error.error_msg = f"The actor died unexpectedly before finishing this task.\n{message}"
    return error


def test_only_the_loss_of_a_node_counts_as_lost():
    from ray.exceptions import ActorUnavailableError, RayTaskError

    from nas.tune_driver import lost_with_its_node

    assert lost_with_its_node(died("The actor died because its node has died. Node Id: 262bba9c"))
    assert not lost_with_its_node(died("The actor is dead because it was killed by `ray.kill`."))
    assert not lost_with_its_node(RayTaskError("step", "Traceback ...", RuntimeError("injected failure")))
    assert lost_with_its_node(ActorUnavailableError("the node stopped answering", b"a" * 16))
    assert not lost_with_its_node(None)


def test_a_node_loss_leaves_no_error_row_but_a_later_failure_does(tmp_path, tiny_models):
    from types import SimpleNamespace

    from ray import cloudpickle
    from ray.exceptions import ActorDiedError

    from nas import search, tune_driver
    from nas.results import ResultsTable

    teacher, supernet = tiny_models
    method = search.prepare(search.SearchOptions(space=SPACE, budget=30_000_000, teacher=str(teacher),
                                                 method_options=OfaOptions(str(supernet))))
    table = ResultsTable(tmp_path / "trials.csv")
    progress = tune_driver.ProgressCallback(method, table, tune_driver.TrialRecords(tmp_path / "trials"), total=2,
                                            done=0, convention="torchprofile", budget=30_000_000, enabled=False)
    node_died = died("The actor died because its node has died. Node Id: 262bba9c")

    def trial(name, *failures):
        # Tune's record of a failing trial: "Failure # N" blocks in error.txt; error.pkl holds the
        # last of Ray's own errors only.
        folder = tmp_path / name
        folder.mkdir()
        for n, error in enumerate(failures, 1):
            with open(folder / "error.txt", "a") as f:
                f.write(f"Failure # {n} (occurred at 2026-11-24_19-29-16)\n{error}\n")
            if isinstance(error, ActorDiedError):
                (folder / "error.pkl").write_bytes(cloudpickle.dumps(error))
        return SimpleNamespace(trial_id=name, config={k: v.choices[0] for k, v in method.parameters().items()},
                               error_file=str(folder / "error.txt"), pickled_error_file=str(folder / "error.pkl"))

    progress.on_trial_error(0, [], trial("lost", node_died))
    progress.on_trial_error(0, [], trial("failed", node_died, RuntimeError("reset_config() must return True")))
    rows = table.frame()
    assert progress.lost == 1 and list(rows["trial_id"]) == ["failed"]
    assert rows["status"].tolist() == ["error"] and "reset_config() must return True" in rows["error"].iloc[0]


@pytest.mark.parametrize("args, message", [
    (["--space", "vgg", "--budget", "1G"], "unknown space 'vgg'"),
    (["--budget", "lots"], "cannot read 'lots' as MACs"),
    (["--budget=-2G"], "MACs must be a positive number"),
    (["--budget", "1M"], "budget 1M is below the smallest config of space 'tiny_inception' (1.757M MACs"),
    (["--budget", "1G", "--address", "127.0.0.1:1"], "no Ray cluster answers there"),
    (["--budget", "1G", "--seed", "-1"], "--seed must be in [0, 4.29497e+09], got -1"),
    (["--budget", "1G", "--gpus-per-trial", "-1"], "--gpus-per-trial must be at least 0, got -1"),
    (["--budget", "1G", "--cpus-per-trial", "0"], "--cpus-per-trial must be at least 0.01, got 0"),
])
def test_bad_input_fails_before_ray_starts(tmp_path, tiny_models, args, message):
    cmd = search_cmd(tiny_models, tmp_path / "run")
    cmd = cmd[:3] + [a for a in cmd[5:]] if args[0] == "--space" else cmd
    began = time.time()
    done = run(cmd + args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.time() - began < 60 and not (tmp_path / "run").exists()


def test_gpus_asked_of_a_local_instance_without_any_fail_at_once(tmp_path, tiny_models):
    # a local Ray instance would wait for a GPU forever; the search says so before Ray starts
    # (GPUs hidden, so that the check runs on a machine that has one too)
    done = run(search_cmd(tiny_models, tmp_path / "run") + ["--budget", "1G", "--gpus-per-trial", "0.5"],
               env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and "no CUDA GPU and no cluster was given" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_out_holding_another_run_is_refused(tmp_path, tiny_models):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    done = run(search_cmd(tiny_models, out, "--budget", "30M"))
    assert done.returncode == 2 and "already holds a search" in done.stderr


def test_losing_a_worker_node_loses_no_trial(tmp_path, tiny_models):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        cmd = search_cmd(tiny_models, out, "--budget", "30M", "--trials", "10", "--max-failures", "3",
                         "--address", cluster.address)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if (out / "trials.csv").exists() and len(pd.read_csv(out / "trials.csv")) >= 2:
                break
            time.sleep(0.2)
        cluster.remove_node(worker)  # trials running there die with it
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        table = pd.read_csv(out / "trials.csv", dtype={"config": str})
        assert len(table) == 10 and table["trial_id"].is_unique
        # the lost node's trials were retried on the head node
        assert (table["status"] == "ok").all(), table.loc[table["status"] != "ok", ["trial_id", "error"]].to_string()
    finally:
        cluster.shutdown()


def test_resume_refuses_a_run_measured_with_another_protocol(tmp_path, tiny_models):
    """Rows measured on centre crops (before whole images) cannot share a front with new ones."""
    teacher, supernet = tiny_models
    out = tmp_path / "run"
    out.mkdir()
    old_options = {"space": SPACE, "budget": 30_000_000, "teacher": str(teacher), "supernet": str(supernet),
                   "out": str(out), "extra": {}}  # as an older version wrote them ("extra" is gone)
    (out / "run.json").write_text(json.dumps({"options": old_options, "resumes": [], "rejected": 0}))
    done = run([sys.executable, "-m", "nas.search", "--out", str(out), "--resume", "--no-progress"])
    assert done.returncode == 2 and "another protocol (256x256 centre crops)" in done.stderr
    assert "Traceback" not in done.stderr and not (out / "trials.csv").exists()


@pytest.mark.slow  # the default suite's time (README: tests)
def test_a_tight_budget_finishes_by_repairing_samples(tmp_path, tiny_models):
    """5% above the smallest config: most samples are over budget; after a few rejections one is
    shrunk to fit, so the search makes progress instead of drowning Optuna in failed samples."""
    out = tmp_path / "run"
    done = run(search_cmd(tiny_models, out, "--budget", "1.845M", "--trials", "8"))
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    assert len(table) == 8 and (table["status"] == "ok").all() and (table["macs_torchprofile"] <= 1_845_000).all()
    info = json.loads((out / "run.json").read_text())
    # at most MAX_REJECTIONS rejected samples per trial (it was up to 100,000), then a repair
    from nas.tune_driver import MAX_REJECTIONS

    assert info["repaired"] > 0 and MAX_REJECTIONS * info["repaired"] <= info["rejected"] <= MAX_REJECTIONS * 8
    assert "repaired to fit it" in done.stdout


@pytest.mark.parametrize("inherited_quality, kept", [(float("inf"), "inherited"), (float("-inf"), None)])
def test_an_ofa_export_keeps_the_inherited_weights_when_the_fine_tune_loses_quality(tmp_path, tiny_models,
                                                                                     inherited_quality, kept):
    """The fine-tuned subnet is judged on val against the row's inherited quality: worse, and best/ holds
    the supernet's own slice (report ``kept``: inherited); better, and it holds the fine-tuned weights."""
    from nas.checkpoint import load_generator, load_supernet
    from nas.methods.base import SearchContext
    from nas.methods.ofa import OfaMethod

    teacher, supernet_path = tiny_models
    method = OfaMethod(SearchContext(method="ofa", task="sr4x", teacher=str(teacher),
                                     space="tests/spaces/tiny_inception.yaml", budget=int(3e6),
                                     options=OfaOptions(str(supernet_path), finetune_steps=2)))
    method.load()
    supernet, _ = load_supernet(supernet_path)
    config = supernet.space.max_config()
    row = {"config": supernet.space.encode(config), "quality": inherited_quality}
    report = method.export(row, None, tmp_path / "best")
    assert report.get("kept") == kept and report["finetune_steps"] == 2
    exported = load_generator(tmp_path / "best" / "model.pth").module.state_dict()
    inherited = supernet.extract(config).state_dict()
    same = all(bool((v == inherited[k]).all()) for k, v in exported.items())
    assert same is (kept == "inherited")
    if kept:
        assert set(report["finetuned_val"]) == {"quality", "share"}


def test_the_front_of_a_lower_is_better_quality_runs_the_other_way():
    from nas.pareto import pareto_front

    rows = pd.DataFrame({"trial_id": list("abcd"), "status": "ok", "config": list("abcd"),
                         "macs_torchprofile": [1e6, 2e6, 3e6, 4e6], "quality": [40.0, 50.0, 30.0, 35.0]})
    fid_front = pareto_front(rows, higher_is_better=False)  # FID: a cheaper and lower row dominates
    assert fid_front.front_rows["trial_id"].tolist() == ["a", "c"]
    assert pareto_front(rows).front_rows["trial_id"].tolist() == ["a", "b"]  # PSNR: higher is better


def test_fid_on_fewer_images_than_the_minimum_is_refused_before_anything_runs(tmp_path, tiny_models):
    """sr4x's val split has two photos: an FID of two images would say nothing."""
    done = run(search_cmd(tiny_models, tmp_path / "run", "--budget", "30M", "--quality", "fid"))
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "FID needs at least 50 generated images (one per input of the val split of sr4x), found 2" in done.stderr
    assert not (tmp_path / "run").exists()
    done = run(search_cmd(tiny_models, tmp_path / "run", "--budget", "30M", "--quality", "lpips"))
    assert done.returncode == 2 and "--quality must be one of psnr, fid" in done.stderr


def aligned_task(root, pairs: dict[str, int], seed: int = 0):
    """A pix2pix folder (A|B side by side, 32x32 each) of smooth random images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in pairs.items():
        (root / split).mkdir(parents=True)
        for i in range(n):
            fields = rng.integers(0, 256, size=(4, 8, 3), dtype=np.uint8)
            Image.fromarray(fields).resize((64, 32), Image.BILINEAR).save(root / split / f"{i}.png")
    return root


def test_a_search_by_fid_minimises_it_end_to_end(tmp_path, tiny_models):
    """--quality fid with the FID Inception (random weights in its layout, given with --fid-weights): rows,
    front, best, Optuna's directions and the summary all take lower as better; counts beside every FID."""
    import torch
    from torch import nn

    from evaluators.fid import inception_module
    from nas.pareto import pareto_front

    torch.manual_seed(0)
    module = inception_module()
    for layer in module.modules():  # random weights that keep activations in scale (see tests/test_fid.py)
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    weights = tmp_path / "random_inception.pth"
    torch.save(module.state_dict(), weights)
    task = aligned_task(tmp_path / "task", {"train": 2, "val": 5})
    out = tmp_path / "run"
    done = run(search_cmd(tiny_models, out, "--budget", "30M", "--trials", "3", "--sampler", "random",
                          "--task", str(task), "--quality", "fid", "--fid-weights", str(weights),
                          "--fid-min-images", "4"))
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(out / "trials.csv", dtype={"config": str})
    assert len(table) == 3 and (table["status"] == "ok").all() and (table["quality_metric"] == "fid").all()
    assert (table["quality"] == table["fid"]).all() and table["kid"].notna().all() and table["share"].isna().all()
    assert (table["fid_images"] == 5).all() and (table["fid_real_images"] == 5).all()  # val's 5 B halves
    info = json.loads((out / "run.json").read_text())
    assert info["quality_metric"] == "fid" and info["options"]["quality"] == "fid"
    assert info["fid"]["real_images"] == 5 and "B halves of the val split" in info["fid"]["source"]
    assert len(list((out / "fid").glob("fid-real-*.pt"))) == 1  # computed once, beside the run
    assert info["best"]["config"] == table.loc[table["quality"].idxmin(), "config"]  # the lowest FID wins
    assert info["front"] == pareto_front(table, higher_is_better=False).front_rows["config"].tolist()
    assert info["teacher_val"]["fid"] is not None and info["best"]["exported"]["fid_images"] == 5
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'optuna.db'}")
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    assert "val FID (lower is better)" in done.stdout and "5 generated vs 5 real images" in done.stdout
    assert "images (gen/real)" in done.stdout and "noisy" in done.stdout and "share" not in done.stdout
    html = (out / "pareto.html").read_text()
    assert "val FID, 5 generated vs 5 real images (lower is better)" in html


@pytest.mark.slow
def test_ctrl_c_marks_the_search_interrupted_and_a_copy_resumes_where_it_is(tmp_path, tiny_models):
    """Ctrl-C: exit 130, run.json "interrupted", the resume command printed; the run folder copied elsewhere
    resumes there (--out, not the folder stored in run.json) and leaves the original as it was."""
    import shutil

    teacher, _ = tiny_models
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas.search", "--method", "kd", "--space", "tests/spaces/tiny_resnet.yaml", "--teacher",
         str(teacher), "--budget", "3M", "--trials", "4", "--out", str(out), "--no-progress", "--steps", "40",
         "--checkpoint-every", "10", "--batch-size", "2", "--crop", "32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (xdist's workers ignore SIGINT)
    began = time.monotonic()
    while proc.poll() is None and time.monotonic() - began < 300:
        if (out / "trials.csv").exists() and len((out / "trials.csv").read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert f"continue it with: python -m nas.search --resume --out {out}" in err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and len(pd.read_csv(out / "trials.csv")) < 4
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".csv")}
    files_before = sorted(out.rglob("*"))
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    done = subprocess.run([sys.executable, "-m", "nas.search", "--resume", "--out", str(copy), "--no-progress"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((copy / "run.json").read_text())
    assert resumed["status"] == "finished" and len(pd.read_csv(copy / "trials.csv")) == 4
    assert (copy / "best" / "export.json").is_file()
    assert {p: p.read_bytes() for p in before} == before and sorted(out.rglob("*")) == files_before  # untouched
