"""The Ray Tune side of a search: the trainable, the budget-gated Optuna searcher, progress and records.

A trial is a method's ``Trial`` behind Tune's class API: ``step`` maps to ``Trial.step``,
``save_checkpoint`` / ``load_checkpoint`` to ``Trial.save`` / ``Trial.restore``. Cheap trials
(``ofa``: one subnet evaluation) reuse their worker actors and keep no checkpoint, as Tune's
per-trial overhead is large against them; training trials checkpoint every step of the trial and
get a fresh actor each, so that a retry or a lost node continues from the last checkpoint (Tune
does not retry a trial whose *reused* actor died with its node).

Artifacts travel through Tune's storage: a trial's checkpoints (and the student they end with) are
persisted by the worker to ``--storage`` (a shared path or a cloud URI on a real cluster), and the
driver reads them from there, never from a worker's disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from ray import tune
from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from tqdm import tqdm

from evaluators.quality import higher_is_better
from nas.files import atomic_write_text
from nas.methods import Candidate, Method, SearchContext, get_method
from nas.methods.base import Categorical, Failed, LogUniform
from nas.ray_session import check_cluster_gpus, start_ray
from nas.results import ResultsTable, now, row_from_result

# A sample over the budget is rejected this many times at most, then the last one is repaired
# (shrunk until it fits): rejected samples are told to the in-memory study, and a study that grows
# by thousands of failed trials per suggestion slows every later suggestion down. At 200, a budget
# that one sample in 25 meets (inception at 0.5G) is almost never repaired, so the sampler's own
# choices are what gets evaluated; with 20, 37 of the default search's 40 candidates were repairs.
MAX_REJECTIONS = 200
# Ray's wording for an actor killed by the loss of its node (ActorDiedError carries no structured cause).
NODE_DIED = "its node has died"
RESUME_KEY = "_resume"  # a config key: continue a trial (its id and checkpoint) instead of starting one
logger = logging.getLogger(__name__)


def quality_mode(method: Method) -> str:
    """Tune's mode for the quality: "max" (PSNR) or "min" (FID)."""
    return "max" if higher_is_better(method.context.quality) else "min"


def tune_space(method: Method) -> dict[str, Any]:
    """Tune's search space for the method's parameters."""
    space = {}
    for name, param in method.parameters().items():
        space[name] = tune.choice(list(param.choices)) if isinstance(param, Categorical) else \
            tune.loguniform(param.low, param.high)
    return space


def optuna_distributions(method: Method) -> dict[str, optuna.distributions.BaseDistribution]:
    out = {}
    for name, param in method.parameters().items():
        if isinstance(param, Categorical):
            out[name] = optuna.distributions.CategoricalDistribution(list(param.choices))
        elif isinstance(param, LogUniform):
            out[name] = optuna.distributions.FloatDistribution(param.low, param.high, log=True)
    return out


def fetch(uri: str, dest: Path) -> Path:
    """A file of Tune's storage (a local path or a cloud URI) copied to ``dest`` on this machine."""
    import pyarrow.fs

    if "://" not in uri:
        return Path(uri)
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return dest


def _download_dir(uri: str) -> Path:
    """A checkpoint folder of Tune's storage, readable on this worker."""
    if "://" not in uri:
        return Path(uri)
    import tempfile

    import pyarrow.fs

    local = Path(tempfile.mkdtemp(prefix="nas-restore-"))
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return local


class MethodTrainable(tune.Trainable):
    """Runs one ``Trial`` of the method; the method (weights, val data) is loaded once per actor."""

    def setup(self, config: dict[str, Any], context: SearchContext) -> None:
        self.method = get_method(context.method)(context)
        self.method.load()
        self._start(config)

    def _start(self, config: dict[str, Any]) -> None:
        self.params = {k: v for k, v in config.items() if k != RESUME_KEY}
        self.resumed = config.get(RESUME_KEY)
        self.cpu_began = time.process_time()
        self.restored_at: int | None = None  # the step a checkpoint gave back, if any
        self.trial = self.method.start(self.params)
        if self.resumed:  # a trial of an earlier run (driver killed, or its node lost for good)
            self._restore(_download_dir(self.resumed["checkpoint"]))

    def _restore(self, folder: Path) -> None:
        self.trial.restore(folder)
        self.restored_at = self.trial.steps_done

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._start(new_config)
        return True

    def step(self) -> dict[str, Any]:
        # Fault injection for tests of retries and error rows: trials whose description matches raise.
        pattern = os.environ.get("NAS_FAIL_CONFIG")
        if pattern and re.search(pattern, self.method.describe(self.params)):
            raise RuntimeError(f"injected failure (NAS_FAIL_CONFIG={pattern})")
        # Slows training trials down so that tests can take a node or the driver away mid-trial.
        time.sleep(float(os.environ.get("NAS_TRIAL_STEP_SLEEP", 0)) if self.method.trains else 0)
        out = self.trial.step()
        extra = {"resumed_from": self.resumed["id"] if self.resumed else None, "restored_at": self.restored_at,
                 "cpu_seconds": round(time.process_time() - self.cpu_began, 3), "worker_dir": self.logdir}
        if isinstance(out, Candidate):
            return {**out.result(), **extra, "done": True}
        if isinstance(out, Failed):
            return {"failed": out.message, **extra, "done": True}
        return {**out, **extra}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        # Tune persists this folder to its storage, then removes it from the worker.
        self.trial.save(Path(checkpoint_dir))

    def load_checkpoint(self, checkpoint: str | None) -> None:
        if checkpoint:
            self._restore(Path(checkpoint))

    def cleanup(self) -> None:
        # A training trial's worker-local folder holds nothing the driver needs (everything went
        # through Tune's storage): removing it keeps worker disks clean and the driver honest.
        # (Reused actors of cheap trials keep theirs: Tune hands them on.)
        if self.method.trains:
            import shutil

            shutil.rmtree(self.logdir, ignore_errors=True)


class Clock:
    """Seconds the driver spends per trial, by whose code runs: the project's searcher and callbacks,
    Optuna's sampler, and the run's SQLite record (``overhead.csv``; bench/search_overhead.py reads it)."""

    PARTS = ("searcher", "callbacks", "sampler", "record")

    def __init__(self) -> None:
        self.totals = dict.fromkeys(self.PARTS, 0.0)
        self.per_trial: list[dict[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, part: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.totals[part] += time.perf_counter() - began

    def trial_done(self) -> None:
        self.per_trial.append(self.totals)
        self.totals = dict.fromkeys(self.PARTS, 0.0)

    def write(self, path: Path) -> None:
        new = not path.exists()
        with open(path, "a") as f:
            if new:
                f.write("project_s,sampler_s,record_s\n")
            for t in self.per_trial:  # the project's own work: searcher and callbacks less Optuna's parts
                own = t["searcher"] + t["callbacks"] - t["sampler"] - t["record"]
                f.write(f"{own:.6f},{t['sampler']:.6f},{t['record']:.6f}\n")
        self.per_trial = []


@dataclass
class TrialRecords:
    """What the driver knows of each trial beyond its row: params, latest checkpoint, progress
    (``runs/NAME/trials/<id>/``), so that a resumed search continues unfinished training trials."""

    root: Path
    checkpoints: dict[str, str] = field(default_factory=dict)  # trial id -> latest persisted checkpoint

    def folder(self, trial_id: str) -> Path:
        return self.root / trial_id

    def write(self, trial_id: str, **info: Any) -> None:
        path = self.folder(trial_id) / "trial.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.update(info)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")

    def progress(self, trial_id: str, result: dict[str, Any]) -> None:
        path = self.folder(trial_id) / "progress.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a") as f:  # append-only: one line per report, readable at any time
            if new:
                f.write("time,step,steps,loss,cpu_seconds,restored_at\n")
            restored = result.get("restored_at")
            f.write(f"{time.time():.3f},{result.get('step')},{result.get('steps')},{result.get('loss')},"
                    f"{result.get('cpu_seconds')},{'' if restored is None else restored}\n")

    def unfinished(self, table: ResultsTable) -> list[dict[str, Any]]:
        """Trials with a checkpoint and no row: continued (same params) before any new sample."""
        out = []
        for path in sorted(self.root.glob("*/trial.json")):
            info = json.loads(path.read_text())
            if info.get("checkpoint") and info.get("id") not in table and info.get("status") != "finished":
                out.append(info)
        return out


class BudgetSearcher(Searcher):
    """Optuna's suggestions, under the MACs budget where a method knows a candidate's cost before any
    work (``bound``); unfinished training trials and the method's first params come first.

    A sample over the budget is never evaluated: it is told to Optuna as failed and the next sample
    is drawn, up to ``MAX_REJECTIONS`` times; then the sample is repaired (the method shrinks it
    until it fits). The study learns only from what was evaluated: a repaired candidate is added to
    it with the params it really had. Results are recorded before Optuna is told, so a driver killed
    between the two loses nothing that Optuna knows of.
    """

    def __init__(self, inner: OptunaSearch, method: Method, table: ResultsTable, records: TrialRecords, *,
                 budget: int, convention: str, record, writer: RecordWriter, queue: list[dict[str, Any]], seed: int,
                 clock: Clock) -> None:
        super().__init__(metric=["quality", "macs"], mode=[quality_mode(method), "min"])
        self.inner, self.method, self.table, self.records = inner, method, table, records
        self.record = record  # the run's SQLite study: evaluated trials only
        self.writer = writer
        self.budget, self.convention = budget, convention
        self.queue = list(queue)  # params to run before any sample (unfinished trials first)
        self.rng = random.Random(seed)
        self.rejected = self.repaired = 0
        self._probe: dict[str, str | None] = {}
        self._params: dict[str, dict[str, Any]] = {}
        self._attempt = 0
        self.distributions = optuna_distributions(method)
        self.clock = clock

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ready = self.inner.set_search_properties(metric, mode, config, **spec)
        # The sampler continues from every candidate evaluated so far (a resumed search).
        self.inner._ot_study.add_trials(self.record.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
        return ready

    def _cost(self, params: dict[str, Any]) -> int | None:
        bound = self.method.bound(params)
        return None if bound is None else getattr(bound, self.convention)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        with self.clock("searcher"):
            return self._suggest(trial_id)

    def _suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.queue:
            params = self.queue.pop(0)
            self._probe[trial_id], self._params[trial_id] = None, params
            return params
        params = None
        for _ in range(MAX_REJECTIONS + 1):
            self._attempt += 1
            probe = f"{trial_id}~{self._attempt}"
            with self.clock("sampler"):
                params = self.inner.suggest(probe)
            if params is None or params == Searcher.FINISHED:
                return params
            cost = self._cost(params)
            if cost is None or cost <= self.budget:
                self._probe[trial_id], self._params[trial_id] = probe, params
                return params
            self.rejected += 1  # never evaluated; the in-memory study sees it fail, the run's record does not
            with self.clock("sampler"):
                self.inner.on_trial_complete(probe, result=None, error=True)
        self.repaired += 1
        params = self.method.repair(params, self.budget, self.rng)
        self._probe[trial_id], self._params[trial_id] = None, params
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # progress is the callback's; the sampler learns on completion

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        with self.clock("searcher"):
            self._complete(trial_id, result, error)

    def _complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        if trial_id not in self._params:
            return
        probe, params = self._probe.pop(trial_id), self._params.pop(trial_id)
        if not (result and not error and result.get("quality") is not None):
            if probe is not None:
                self.inner.on_trial_complete(probe, result=None, error=True)
            return
        row_id = result.get("resumed_from") or trial_id
        weights = result.get("weights")
        checkpoint = self.records.checkpoints.get(trial_id)
        clean = {k: v for k, v in params.items() if k != RESUME_KEY}
        row = row_from_result(row_id, self.method, result, params=clean, budget=self.budget,
                              convention=self.convention,
                              weights=f"{checkpoint}/{weights}" if weights and checkpoint else None)
        self.table.add(row)
        if self.method.trains:
            self.records.write(row_id, status="finished")
        values = {"quality": result["quality"], "macs": row[f"macs_{self.convention}"]}
        with self.clock("record"):
            self.writer.put(row)
        with self.clock("sampler"):
            if probe is not None and clean == params:
                self.inner.on_trial_complete(probe, result=values)
            else:  # queued, resumed or repaired: the sampler learns what was really evaluated
                self.inner._ot_study.add_trial(optuna.trial.create_trial(
                    params=clean, distributions=self.distributions, values=[values["quality"], values["macs"]]))

    def save(self, checkpoint_path: str) -> None:
        # Resuming goes through trials.csv and the Optuna storage, not through Tune's searcher state.
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"rejected": self.rejected, "repaired": self.repaired}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.rejected, self.repaired = state["rejected"], state.get("repaired", 0)


def _record_trial(row: dict[str, Any], distributions, convention: str):
    return optuna.trial.create_trial(
        params=json.loads(row["params_json"]), distributions=distributions,
        values=[float(row["quality"]), float(row[f"macs_{convention}"])],
        user_attrs={"trial_id": row["trial_id"], "config": row["config"], "params": row["params_json"]})


class RecordWriter:
    """Copies rows into the run's SQLite study (what optuna-dashboard shows) on a thread of its own:
    a write costs 40-70 ms here, too much for the loop that hands the next trial to a free worker.
    The thread opens its own connection; whatever it has not written when the driver dies is copied
    from the results table by ``reconcile_record``."""

    def __init__(self, storage: str, method: Method, convention: str) -> None:
        import queue
        import threading

        self.storage, self.convention = storage, convention
        self.distributions = optuna_distributions(method)
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="optuna-record", daemon=True)
        self.thread.start()

    def put(self, row: dict[str, Any]) -> None:
        self.queue.put(row)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the searcher into its experiment state: a copy carries no thread (and writes nothing)
        return {"storage": self.storage, "convention": self.convention, "distributions": self.distributions,
                "queue": None, "thread": None}

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        study = optuna.load_study(study_name="search", storage=self.storage)
        while (row := self.queue.get()) is not None:
            try:
                study.add_trial(_record_trial(row, self.distributions, self.convention))
            except Exception as exc:  # the row is safe in the table; the record is reconciled at the end
                logger.warning("could not copy trial %s into the Optuna record yet: %s", row["trial_id"], exc)


def reconcile_record(record, table: ResultsTable, method: Method, convention: str) -> int:
    """Copy the rows of the results table that the run's SQLite study (what optuna-dashboard shows)
    lacks into it, in one write; returns how many."""
    known = {t.user_attrs.get("trial_id") for t in record.get_trials(deepcopy=False)}
    distributions = optuna_distributions(method)
    missing = [_record_trial(row, distributions, convention) for row in table.rows.values()
        if row["status"] == "ok" and row["trial_id"] not in known and row.get("params_json")]
    if missing:
        record.add_trials(missing)
    return len(missing)


@dataclass
class TuneRound:
    rejected: int  # samples over the MACs budget, never evaluated
    repaired: int  # samples shrunk to fit the budget after MAX_REJECTIONS rejections
    lost: int  # trials that died with their worker node and left no checkpoint to continue from


class ProgressCallback(Callback):
    """Trials done / total and the best feasible candidate so far; training progress per trial;
    checkpoints recorded for export and resume; trials that failed for good get an error row.

    A trial that died with its node is not a property of its candidate: it gets no error row. A
    training trial with a checkpoint is continued by the next round; others are counted as lost
    and replaced by new samples.
    """

    def __init__(self, method: Method, table: ResultsTable, records: TrialRecords, *, total: int, done: int,
                 convention: str, budget: int, enabled: bool, clock: Clock | None = None,
                 on_batch: Callable[[], None] | None = None) -> None:
        self.clock = clock or Clock()
        self.on_batch, self._saves = on_batch, table.saves
        self.method, self.table, self.records, self.convention, self.budget = method, table, records, convention, budget
        self.higher_is_better = higher_is_better(method.context.quality)
        self.lost = 0
        self.best: tuple[float, float] | None = None
        for row in table.rows.values():
            self._consider(row)
        self.bar = tqdm(total=total, initial=done, desc="search", unit="trial", disable=not enabled,
                        dynamic_ncols=True)

    def _consider(self, row: dict[str, Any]) -> None:
        if row.get("status") == "ok" and row.get("feasible") and row.get("quality") is not None:
            quality, macs = float(row["quality"]), float(row[f"macs_{self.convention}"])
            if self.best is None or (quality > self.best[0] if self.higher_is_better else quality < self.best[0]):
                self.best = (quality, macs)

    def _update(self, running: str = "") -> None:
        # Incremental: the table is never re-read (per-trial work stays flat as a search grows).
        self.bar.n = len(self.table)
        parts = [running] if running else []
        if self.best:
            parts.append(f"best feasible {self.best[0]:.3f} at {self.best[1] / 1e9:.3g}G")
        self.bar.set_postfix_str(", ".join(parts))
        self.bar.refresh()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if self.method.trains:
            row_id, params, _ = row_of(trial)
            # (a retried trial starts again: its last checkpoint stays recorded)
            self.records.write(row_id, id=row_id, params=params, status="running", tune_trial=trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.method.trains and not result.get("done") and "step" in result:
            row_id = result.get("resumed_from") or trial.trial_id
            self.records.progress(row_id, result)
            if result.get("worker_dir"):
                self.records.write(row_id, worker_dir=result["worker_dir"])
            self._update(f"{row_id}: step {result['step']}/{result['steps']}")

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        uri = checkpoint.path if checkpoint.filesystem.type_name == "local" else \
            f"{checkpoint.filesystem.type_name}://{checkpoint.path}"
        self.records.checkpoints[trial.trial_id] = uri
        if self.method.trains:
            self.records.write(row_of(trial)[0], checkpoint=uri)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        with self.clock("callbacks"):
            self._completed(trial)
        self.clock.trial_done()

    def _completed(self, trial) -> None:
        row = self.table.rows.get(trial.trial_id)
        if row is None and trial.last_result:
            row = self.table.rows.get(str(trial.last_result.get("resumed_from")))
        if row is None and trial.last_result and trial.last_result.get("failed"):
            self._error_row(*row_of(trial)[:2], trial.last_result["failed"])
        if row is not None:
            self._consider(row)
        if self.on_batch is not None and self.table.saves != self._saves:
            self._saves = self.table.saves  # a batch: as often as trials.csv is rewritten, less as it grows
            self.on_batch()
        self._update()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        row_id, params, resumed = row_of(trial)
        if lost_with_its_node(_error(trial)):
            if self.method.trains and (resumed or self.records.checkpoints.get(trial.trial_id)):
                logger.warning("trial %s (%s) was lost with its worker node; it continues from its checkpoint",
                               row_id, self.method.describe(params))
            else:
                self.lost += 1
                logger.warning("trial %s (%s) was lost with its worker node; another trial will take its place",
                               row_id, self.method.describe(params))
        elif row_id not in self.table:
            self._error_row(row_id, params, _error_message(trial))
        self._update()

    def _error_row(self, row_id: str, params: dict[str, Any], message: str) -> None:
        """The row of a trial that failed for good (an exception after its retries, or a Failed result)."""
        bound = self.method.bound(params)
        self.table.add({"trial_id": row_id, "method": self.method.name, "space": self.method.space.name,
                        "config": self.method.describe(params), "params_json": json.dumps(params),
                        "macs_torchprofile": bound.torchprofile if bound else None,
                        "macs_fvcore": bound.fvcore if bound else None, "params": bound.params if bound else None,
                        "feasible": None, "status": "error", "error": message, "finished_at": now()})
        if self.method.trains:
            self.records.write(row_id, status="failed")

    def close(self) -> None:
        self.bar.close()


def row_of(trial) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """A Tune trial's row id (an earlier run's, for a resumed trial), its parameters, and what it resumes."""
    config = dict(trial.config)
    resumed = config.pop(RESUME_KEY, None)
    return (resumed["id"] if resumed else trial.trial_id), config, resumed


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
    text = lines[-1] if lines else "trial failed"
    # "ray.exceptions.RayTaskError(UserError): ...: message" -> the message a user can act on
    text = re.sub(r"^.*?UserError\)?:\s*", "", text)
    return text[:500]


def _trial_slots(resources: dict[str, float], cpus: float, gpus: float) -> int:
    slots = int(resources.get("CPU", 1) // cpus) if cpus > 0 else 1
    if gpus > 0:
        slots = min(slots, int(resources.get("GPU", 0) // gpus))
    return max(1, slots)


def tune_trials(method: Method, options, table: ResultsTable, records: TrialRecords, *, storage_path: str,
                study_storage: str, address: str | None, sampler, experiment: str, done: int,
                queue: list[dict[str, Any]], on_batch: Callable[[], None] | None = None) -> TuneRound:
    """Run ``options.trials - done`` trials (``queue`` first); says what was rejected, repaired and lost.
    ``on_batch`` is called on the driver whenever ``trials.csv`` was rewritten (a batch of new rows)."""
    import ray
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Per-trial loggers cost more than a subnet evaluation; trials.csv and trials/<id>/ are the record.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Progress results of training trials carry no quality yet.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started_here = start_ray(address)
    if address:
        try:
            check_cluster_gpus(options.gpus_per_trial, address)
        except BaseException:
            if started_here:
                ray.shutdown()
            raise
    try:
        # Tune keeps one trial pending when a searcher is used, which lets a reused actor sit idle:
        # allow one pending trial per slot of the cluster.
        slots = _trial_slots(ray.cluster_resources(), options.cpus_per_trial, options.gpus_per_trial)
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(2, slots)))
        # Ctrl-C stops the search as an interruption (KeyboardInterrupt: run.json says "interrupted", exit
        # 130, --resume continues it), not as Tune's graceful stop, which returns as if the search had ended.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        # Sampling runs on an in-memory study (samples over budget are cheap); evaluated trials are
        # copied into the run's SQLite study, which a resumed search loads back.
        mode = quality_mode(method)  # FID is minimised
        record = optuna.create_study(study_name="search", storage=study_storage,
                                     directions=["maximize" if mode == "max" else "minimize", "minimize"],
                                     load_if_exists=True)
        reconcile_record(record, table, method, options.macs_convention)
        inner = OptunaSearch(metric=["quality", "macs"], mode=[mode, "min"], sampler=sampler, seed=options.seed)
        clock = Clock()
        writer = RecordWriter(study_storage, method, options.macs_convention)
        searcher = BudgetSearcher(inner, method, table, records, budget=options.budget,
                                  convention=options.macs_convention, record=record, writer=writer, queue=queue,
                                  seed=options.seed, clock=clock)
        progress = ProgressCallback(method, table, records, total=options.trials, done=done,
                                    convention=options.macs_convention, budget=options.budget,
                                    enabled=options.progress, clock=clock, on_batch=on_batch)
        resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(MethodTrainable, context=method.context), resources)
        checkpoints = CheckpointConfig(checkpoint_at_end=True, checkpoint_frequency=1, num_to_keep=2) \
            if method.trains else CheckpointConfig(checkpoint_at_end=False, checkpoint_frequency=0)
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(method),
            tune_config=TuneConfig(search_alg=searcher, num_samples=options.trials - done,
                                   reuse_actors=not method.trains),
            run_config=RunConfig(name=experiment, storage_path=storage_path, verbose=0, callbacks=[progress],
                                 failure_config=FailureConfig(max_failures=options.max_failures),
                                 checkpoint_config=checkpoints),
        )
        try:
            tuner.fit()
        finally:
            writer.close()
        progress.close()
        clock.write(records.root.parent / "overhead.csv")
        return TuneRound(rejected=searcher.rejected, repaired=searcher.repaired, lost=progress.lost)
    finally:
        if started_here:
            ray.shutdown()
        table.save()
        reconcile_record(optuna.load_study(study_name="search", storage=study_storage), table, method,
                         options.macs_convention)
