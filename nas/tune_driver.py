"""The Ray Tune side of a search: a reusable trainable, a budget-gated Optuna searcher, progress.

Tune's per-trial overhead is large against one subnet evaluation, so each worker actor loads the
method's resources once (``setup``) and is reused across trials (``reset_config``). Samples over
the MACs budget are rejected on the driver with the analytic count, before any work.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from tqdm import tqdm

from nas.methods import SearchContext, SearchMethod, get_method
from nas.results import ResultsTable

MAX_REJECTIONS = 100_000
# Ray's wording for an actor killed by the loss of its node (ActorDiedError carries no structured cause).
NODE_DIED = "its node has died"
logger = logging.getLogger(__name__)


class CandidateTrainable(tune.Trainable):
    """Evaluates one candidate per trial; the method (supernet, val data) is loaded once per actor."""

    def setup(self, config: dict[str, Any], context: SearchContext) -> None:
        self.method = get_method(context.method)(context)
        self.method.load()
        self.params = config

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self.params = new_config
        return True

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        return {}  # a trial is one evaluation: there is no state to keep between steps

    def load_checkpoint(self, checkpoint: dict | str | None) -> None:
        pass

    def step(self) -> dict[str, Any]:
        # Fault injection for tests of retries and error rows: configs matching this regex raise.
        pattern = os.environ.get("NAS_FAIL_CONFIG")
        if pattern and re.search(pattern, self.method.describe(self.params)):
            raise RuntimeError(f"injected failure (NAS_FAIL_CONFIG={pattern})")
        macs = getattr(self.method.cost(self.params), self.method.context.macs_convention)
        return {**self.method.evaluate(self.params), "macs": macs, "done": True}


class BudgetSearcher(Searcher):
    """Optuna's suggestions through a MACs gate; evaluated results are recorded before Optuna is told.

    A sample over budget is never evaluated: it is told to Optuna as failed (with its MACs as an
    attribute), counted, and the next sample is drawn. Recording the row first means a driver
    killed between the two loses nothing that Optuna knows of.
    """

    def __init__(self, inner: OptunaSearch, method: SearchMethod, table: ResultsTable, *, budget: int,
                 convention: str, record) -> None:
        super().__init__(metric=["quality", "macs"], mode=["max", "min"])
        self.inner, self.method, self.table = inner, method, table
        self.record = record  # the run's SQLite study: evaluated trials only
        self.budget, self.convention = budget, convention
        self.rejected = 0
        self._probe: dict[str, str] = {}
        self._params: dict[str, dict[str, Any]] = {}
        self._attempt = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ready = self.inner.set_search_properties(metric, mode, config, **spec)
        # The sampler continues from every candidate evaluated so far (a resumed search).
        self.inner._ot_study.add_trials(self.record.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
        return ready

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for _ in range(MAX_REJECTIONS):
            self._attempt += 1
            probe = f"{trial_id}~{self._attempt}"
            params = self.inner.suggest(probe)
            if params is None or params == Searcher.FINISHED:
                return params
            macs = getattr(self.method.cost(params), self.convention)
            if macs <= self.budget:
                self._probe[trial_id] = probe
                self._params[trial_id] = params
                return params
            self.rejected += 1  # never evaluated; the in-memory study sees it fail, the run's record does not
            self.inner.on_trial_complete(probe, result=None, error=True)
        raise RuntimeError(f"no sample under the budget in {MAX_REJECTIONS} tries")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # one result per trial: everything happens on completion

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        probe, params = self._probe.pop(trial_id, None), self._params.pop(trial_id, None)
        if probe is None:
            return
        if result and not error and result.get("quality") is not None:
            cost = self.method.cost(params)
            macs = getattr(cost, self.convention)
            self.table.add({
                "trial_id": trial_id, "method": self.method.name, "space": self.method.space.name,
                "config": self.method.describe(params), "macs_torchprofile": cost.torchprofile,
                "macs_fvcore": cost.fvcore, "params": cost.params, "quality": result["quality"],
                "share": result.get("share"), "psnr": result.get("psnr"), "ssim": result.get("ssim"), "fidelity_psnr": result.get("fidelity_psnr"),
                "latency_ms": result.get("latency_ms"), "feasible": macs <= self.budget, "status": "ok",
                "node": result.get("node_ip"), "seconds": round(result.get("time_total_s", 0.0), 3),
                "finished_at": _now(),
            })
            values = {"quality": result["quality"], "macs": macs}
            try:
                add_to_record(self.record, self.inner._ot_trials[probe], trial_id, self.method.describe(params), values)
            except Exception as exc:  # the row is safe in trials.csv; the record is reconciled at the end
                logger.warning("could not copy trial %s into the Optuna record yet: %s", trial_id, exc)
            self.inner.on_trial_complete(probe, result=values)
        else:
            self.inner.on_trial_complete(probe, result=None, error=True)

    def save(self, checkpoint_path: str) -> None:
        # Resuming goes through trials.csv and the Optuna storage, not through Tune's searcher state.
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"rejected": self.rejected}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.rejected = pickle.load(f)["rejected"]


def add_to_record(record, trial, trial_id: str, config: str, values: dict[str, float]) -> None:
    """Copy an evaluated trial into the run's SQLite study (what optuna-dashboard shows)."""
    record.add_trial(optuna.trial.create_trial(
        params=trial.params, distributions=trial.distributions, values=[values["quality"], values["macs"]],
        user_attrs={"trial_id": trial_id, "config": config}))


def reconcile_record(record, table: ResultsTable, method: SearchMethod) -> int:
    """Rows of trials.csv missing from the study (the driver died between the two writes) are added."""
    known = {t.user_attrs.get("trial_id") for t in record.get_trials(deepcopy=False)}
    distributions = {name: optuna.distributions.CategoricalDistribution(list(choices))
                     for name, choices in method.parameters().items()}
    added = 0
    for row in table.frame().itertuples():
        if row.status == "ok" and row.trial_id not in known:
            params = method.space.decode(row.config)
            record.add_trial(optuna.trial.create_trial(
                params=params, distributions=distributions,
                values=[float(row.quality), float(getattr(row, f"macs_{method.context.macs_convention}"))],
                user_attrs={"trial_id": row.trial_id, "config": row.config}))
            added += 1
    return added


@dataclass
class TuneRound:
    rejected: int  # samples over the MACs budget, never evaluated
    lost: int  # trials that died with their worker node, not recorded: new samples take their places


class ProgressCallback(Callback):
    """Trials done / total and the best feasible candidate so far; records trials that failed for good.

    A trial that died with its node is not a property of its candidate: it gets no error row and is
    counted as lost. (Tune does not retry a trial whose reused actor was on the lost node: it fails
    while PENDING, which skips ``max_failures``.)
    """

    def __init__(self, method: SearchMethod, table: ResultsTable, *, total: int, done: int, convention: str,
                 enabled: bool) -> None:
        self.method, self.table, self.convention = method, table, convention
        self.lost = 0
        self.bar = tqdm(total=total, initial=done, desc="search", unit="trial", disable=not enabled,
                        dynamic_ncols=True)

    def _update(self) -> None:
        frame = self.table.frame()
        ok = frame[(frame["status"] == "ok") & frame["feasible"].astype(bool)]
        self.bar.n = len(frame)
        if len(ok):
            best = ok.loc[ok["quality"].astype(float).idxmax()]
            self.bar.set_postfix_str(f"best feasible {float(best['quality']):.3f} at "
                                     f"{float(best[f'macs_{self.convention}']) / 1e9:.3g}G")
        self.bar.refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._update()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if lost_with_its_node(_error(trial)):
            self.lost += 1
            logger.warning("trial %s (%s) was lost with its worker node; another trial will take its place",
                           trial.trial_id, self.method.describe(dict(trial.config)))
        elif trial.trial_id not in self.table:
            params = dict(trial.config)
            cost = self.method.cost(params)
            message = _error_message(trial)
            self.table.add({"trial_id": trial.trial_id, "method": self.method.name, "space": self.method.space.name,
                            "config": self.method.describe(params), "macs_torchprofile": cost.torchprofile,
                            "macs_fvcore": cost.fvcore, "params": cost.params, "feasible": True, "status": "error",
                            "error": message, "finished_at": _now()})
        self._update()

    def close(self) -> None:
        self.bar.close()


def _now() -> str:
    """Wall-clock time with milliseconds (throughput is read off these stamps)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def lost_with_its_node(error: BaseException | None) -> bool:
    """Whether a trial failed because Ray lost its worker (the node died or stopped answering)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(error, ActorUnavailableError) or (isinstance(error, RayActorError) and NODE_DIED in str(error))


def _error(trial) -> BaseException | None:
    """The exception a trial last failed with, as Tune pickled it; None if there is none, or if the
    pickle is older than the last failure (Tune pickles only Ray's task and actor errors)."""
    from ray import cloudpickle

    path = getattr(trial, "pickled_error_file", None)
    if not path or not Path(path).exists():
        return None
    try:
        with open(path, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # an unreadable pickle is no evidence of a lost node
        return None
    return error if str(error).strip() in _last_failure(trial) else None


def _last_failure(trial) -> str:
    """The text of the last failure in the trial's error file (Tune appends "Failure # N" blocks)."""
    path = getattr(trial, "error_file", None)
    if not path or not Path(path).exists():
        return ""
    return re.split(r"^Failure # \d+.*$", Path(path).read_text(), flags=re.MULTILINE)[-1].strip()


def _error_message(trial) -> str:
    lines = [line for line in _last_failure(trial).splitlines() if line.strip()]
    return lines[-1][:500] if lines else "trial failed"


def _trial_slots(resources: dict[str, float], cpus: float, gpus: float) -> int:
    slots = int(resources.get("CPU", 1) // cpus) if cpus > 0 else 1
    if gpus > 0:
        slots = min(slots, int(resources.get("GPU", 0) // gpus))
    return max(1, slots)


def tune_trials(method: SearchMethod, options, table: ResultsTable, *, out: Path, storage: str, address: str | None,
                sampler, experiment: str, done: int) -> TuneRound:
    """Run ``options.trials - done`` trials; says how many samples were rejected and how many trials lost."""
    import ray
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Per-trial loggers and checkpoints cost more than a subnet evaluation; trials.csv is the record.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # A local instance stays on loopback.
            # (address="local": never attach to some other cluster running on this machine)
            ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        # Tune keeps one trial pending when a searcher is used, which lets a reused actor sit idle:
        # allow one pending trial per slot of the cluster.
        slots = _trial_slots(ray.cluster_resources(), options.cpus_per_trial, options.gpus_per_trial)
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(2, slots)))
        # Sampling runs on an in-memory study (samples over budget are many and cheap); evaluated trials
        # are copied into the run's SQLite study, which a resumed search loads back.
        record = optuna.create_study(study_name="search", storage=storage, directions=["maximize", "minimize"],
                                     load_if_exists=True)
        reconcile_record(record, table, method)
        inner = OptunaSearch(metric=["quality", "macs"], mode=["max", "min"], sampler=sampler, seed=options.seed)
        searcher = BudgetSearcher(inner, method, table, budget=options.budget, convention=options.macs_convention,
                                  record=record)
        progress = ProgressCallback(method, table, total=options.trials, done=done,
                                    convention=options.macs_convention, enabled=options.progress)
        resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(CandidateTrainable, context=method.context), resources)
        tuner = tune.Tuner(
            trainable,
            param_space={name: tune.choice(list(choices)) for name, choices in method.parameters().items()},
            tune_config=TuneConfig(search_alg=searcher, num_samples=options.trials - done, reuse_actors=True),
            run_config=RunConfig(name=experiment, storage_path=str(out / "tune"), verbose=0, callbacks=[progress],
                                 failure_config=FailureConfig(max_failures=options.max_failures),
                                 checkpoint_config=CheckpointConfig(checkpoint_at_end=False, checkpoint_frequency=0)),
        )
        tuner.fit()
        progress.close()
        return TuneRound(rejected=searcher.rejected, lost=progress.lost)
    finally:
        if started_here:
            ray.shutdown()
        reconcile_record(optuna.load_study(study_name="search", storage=storage), table, method)
