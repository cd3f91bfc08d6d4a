"""``python -m nas.search``: search students under a MACs budget with Ray Tune trials sampled by Optuna.

    python -m nas.search --space inception --budget 0.5G

Without --task/--teacher (and, for ofa, --supernet) it runs on the embedded default (sr4x with the
shipped teacher and supernets). It writes runs/NAME/: trials.csv (one row per candidate),
pareto.html, run.json, optuna.db (open it with optuna-dashboard), trials/ (training trials'
records and progress) and best/ (the best feasible student, exported). The same command with
--address runs on a Ray cluster (with --storage where its nodes share no disk).

--quality fid scores candidates by FID (lower is better) against the target domain's images, with the
standard FID Inception (--fid-weights PATH, else the torch hub cache, fetched once); the real images'
features are computed once and cached in the run folder (fid/).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from evaluators.macs import format_macs
from evaluators.fid import MIN_IMAGES, WEIGHTS_FILE, noise_note
from evaluators.quality import PROTOCOL, format_share, higher_is_better
from nas.checkpoint import load_generator
from nas.cli import (Parser, add_dataclass_arguments, dataclass_from_args, dataclass_from_stored, flag_value,
                     parse_budget, run)
from nas.defaults import DEFAULT_WEIGHTS, default_teacher, shipped_manifest
from nas.files import atomic_write_text, check_output_folder, read_json
from nas.methods import Method, SearchContext, get_method, list_methods
from nas.methods.base import QUALITIES, absolute_paths, check_range, resolve_space
from nas.probes import Probes
from nas.ray_session import check_address
from nas.results import ResultsTable
from nas.runs import HeartbeatThread, RunFolder, RunInfo
from spaces.errors import UserError
from spaces.space import CONVENTIONS

SAMPLERS = ("nsga2", "tpe", "random")


@dataclass
class SearchOptions:
    space: str
    budget: int
    method: str = "ofa"
    task: str = "sr4x"
    teacher: str | None = None
    trials: int = 40
    seed: int = 0
    out: str = ""
    sampler: str = "nsga2"
    macs_convention: str = "torchprofile"
    address: str | None = None
    storage: str | None = None
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_failures: int = 2
    latency_resolution: int = 256
    progress: bool = True
    method_options: Any = None  # the method's Options (its own flags); None: its defaults
    quality: str = "psnr"  # psnr (higher is better) | fid (lower is better)
    fid_weights: str | None = None
    fid_min_images: int = MIN_IMAGES


# ------------------------------------------------------------------------------ checks before Ray


def check_out(out: Path, resume: bool) -> None:
    check_output_folder(out, "--out")
    if resume:
        if not (out / "run.json").is_file():
            raise UserError(f"--resume: {out} holds no search (no run.json); start it without --resume")
        return
    if (out / "run.json").exists() or (out / "trials.csv").exists():
        raise UserError(f"--out {out} already holds a search; pass --resume to continue it or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty and holds no search; choose an empty or new folder")


def prepare(options: SearchOptions) -> Method:
    """Everything that can be checked without Ray: method, space, weights, budget against the smallest config."""
    if options.macs_convention not in CONVENTIONS:
        raise UserError(f"--macs-convention must be one of {', '.join(CONVENTIONS)}")
    if options.trials < 1:
        raise UserError(f"--trials must be at least 1, got {options.trials}")
    check_range(options, "seed", 0, 2**32 - 1)  # numpy's and Optuna's seeds
    check_range(options, "gpus_per_trial", 0, None)
    check_range(options, "cpus_per_trial", 0.01, None)
    check_range(options, "max_failures", 0, None)
    check_range(options, "latency_resolution", 16, None)
    if options.gpus_per_trial > 0 and not check_address(options.address) and not torch.cuda.is_available():
        # a local instance would wait for GPUs forever; a cluster may add GPU nodes on demand
        raise UserError(f"--gpus-per-trial {options.gpus_per_trial:g}: this machine has no CUDA GPU and no cluster "
                        "was given (--address); leave out --gpus-per-trial or run on a cluster with GPU nodes")
    if options.sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}")
    if options.quality not in QUALITIES:
        raise UserError(f"--quality must be one of {', '.join(QUALITIES)}, got {options.quality!r}")
    if options.quality == "fid":
        check_fid(options)
    method_class = get_method(options.method)
    resolve_space(options.space, options.task)  # an unknown name fails here, whatever the method
    method_options = options.method_options if options.method_options is not None else method_class.Options()
    # workers run in other folders, and on other nodes: paths travel absolute
    options.method_options = absolute_paths(method_class.fill_defaults(
        method_options, options.task, options.space, shipped_manifest(options.task), DEFAULT_WEIGHTS))
    options.teacher = str(Path(default_teacher(options.task, options.teacher)).resolve())
    load_generator(options.teacher)  # a damaged teacher: one line here, not a traceback in every trial
    if options.storage and "://" not in options.storage:
        check_output_folder(options.storage, "--storage")
    if Path(options.space).is_file():
        options.space = str(Path(options.space).resolve())
    method = method_class(SearchContext(method=options.method, task=options.task, teacher=options.teacher,
                                        space=options.space, budget=options.budget, seed=options.seed,
                                        latency_resolution=options.latency_resolution,
                                        device="cuda" if options.gpus_per_trial > 0 else "cpu",
                                        macs_convention=options.macs_convention, options=options.method_options,
                                        quality=options.quality, fid_weights=options.fid_weights,
                                        fid_min_images=options.fid_min_images))
    space = method.space
    smallest = getattr(space.cost(space.min_config()), options.macs_convention)
    if options.budget < smallest:
        raise UserError(f"budget {format_macs(options.budget)} is below the smallest config of space '{space.name}' "
                        f"({format_macs(smallest)} MACs, {options.macs_convention} convention, "
                        f"{space.resolution}x{space.resolution}); raise --budget")
    return method


def check_fid(options: SearchOptions) -> None:
    """What --quality fid needs, checked before anything runs: enough generated (val) and real (target
    domain) images, and the Inception's weights (given, cached, or fetched now; one line offline)."""
    from evaluators.fid import check_count, weights_file
    from nas.data import load_task

    if options.fid_min_images < 2:
        raise UserError(f"--fid-min-images must be at least 2 (FID needs a covariance), got {options.fid_min_images}")
    task = load_task(options.task)
    check_count(len(task.val), options.fid_min_images,
                f"generated images (one per input of the val split of {task.name})")
    real = task.real_images("val")
    check_count(len(real), options.fid_min_images, f"real images ({real.source})")
    if options.fid_weights:
        options.fid_weights = str(Path(options.fid_weights).resolve())  # workers run in other folders
    weights_file(options.fid_weights)


def attach_real_features(method: Method, options: SearchOptions, out: Path, device: str) -> dict[str, Any]:
    """The real images' FID features, computed once per search (cached in out/fid/, keyed by the images'
    hashes and the extractor) and handed to the workers with the method's context; returns what run.json
    says of them."""
    from evaluators.fid import inception, real_features
    from nas.data import load_task

    images = load_task(options.task).real_images("val")
    extractor = inception(options.fid_weights, device)
    print(f"FID: Inception features of {len(images)} real images ({images.source}) ...", flush=True)
    real = real_features(extractor, images.images, source=images.source, cache_dir=out / "fid",
                         min_images=options.fid_min_images)
    method.context = replace(method.context, fid_real=real)
    return {"real_images": real.images, "source": real.source, "extractor": real.extractor,
            "weights": extractor.weights, "cache": str(out / "fid" / f"fid-real-{real.key[:16]}.pt")}


# --------------------------------------------------------------------------------------- the run


def _versions() -> dict[str, str]:
    import optuna
    import ray
    import torch

    return {"python": sys.version.split()[0], "torch": torch.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__}


def _sampler(name: str, seed: int, trials: int):
    import optuna

    if name == "nsga2":
        # Optuna's default population (50) would leave a 40-trial search in its random first generation.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, trials // 4)))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def _run_info(options: SearchOptions) -> dict[str, Any]:
    info = asdict(options)
    info["method_options"] = asdict(options.method_options) if options.method_options is not None else None
    return info


def run_search(options: SearchOptions, *, resume: bool = False, command: str = "") -> Path:
    """Run (or continue) a search; returns the run folder."""
    from nas.tune_driver import TrialRecords, tune_trials

    # the method in the default name: two methods on one space and budget do not collide
    out = Path(options.out or f"runs/{options.method}-{Path(options.space).stem}-{format_macs(options.budget)}").resolve()
    check_out(out, resume)
    folder = RunFolder(out)
    info = read_run_info(out) if resume else RunInfo(command=command, started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                      protocol=PROTOCOL)
    if resume and info.protocol != PROTOCOL:
        before = info.protocol or "256x256 centre crops"
        raise UserError(f"--resume: {out} was evaluated with another protocol ({before}) than today's "
                        f"({PROTOCOL}); its rows cannot share a front: start a new search")
    address = check_address(options.address)
    method = prepare(options)
    info.versions = info.versions or _versions()
    info.space = method.space.name
    info.notes = method.notes()
    for note in info.notes:
        print(f"note: {note}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    if options.quality == "fid":
        info.fid = attach_real_features(method, options, out, _driver_device(options))
    info.options = _run_info(options)  # what this run does (a resume may change --trials, --finetune-steps)
    table = ResultsTable(out / "trials.csv")
    records = TrialRecords(out / "trials")
    study_storage = f"sqlite:///{out / 'optuna.db'}"
    # Trials' checkpoints go to Tune's storage: this run's folder, or --storage (shared or cloud) on a cluster.
    storage_path = options.storage or str(out / "tune")
    if resume:
        info.resumes.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "finished_rows": len(table)})
    info.status, info.stopped = "running", None
    folder.write_info(info)
    try:
        with HeartbeatThread(folder):
            # the reference points (teacher, bicubic) and the probe crops' pictures, before any trial
            probes = driver_reference(method, options, info, folder)
            folder.write_info(info)
            attempt = 0
            first = [] if resume or len(table) else method.first_params()
            while len(table) < options.trials:
                # Further rounds continue training trials that lost their node for good and replace lost cheap
                # trials; a round that finishes nothing ends it.
                before = len(table)
                unfinished = records.unfinished(table) if method.trains else []
                queue = [{**u["params"], "_resume": {"id": u["id"], "checkpoint": u["checkpoint"]}} for u in unfinished]
                tag = f"{len(info.resumes)}" + (f"-{attempt}" if attempt else "")
                round_ = tune_trials(method, options, table, records, storage_path=storage_path,
                                     study_storage=study_storage, address=address, queue=queue + first,
                                     sampler=_sampler(options.sampler, options.seed + 1000 * attempt + len(info.resumes),
                                                      options.trials),
                                     experiment=f"tune-{tag}", done=before,
                                     on_batch=lambda: draw_front(probes, method, table, options, info, folder))
                first = []
                info.rejected += round_.rejected
                info.repaired += round_.repaired
                info.lost += round_.lost
                folder.write_info(info)  # a resume keeps these counts
                draw_front(probes, method, table, options, info, folder)
                attempt += 1
                unfinished = records.unfinished(table) if method.trains else []
                if (not round_.lost and not unfinished) or len(table) == before:
                    break
            finish(method, options, table, out, info)
            draw_front(probes, method, table, options, info, folder)
            info.status, info.finished = "finished", time.strftime("%Y-%m-%dT%H:%M:%S")
            folder.write_info(info)
    except BaseException as exc:  # the run's state says why it stopped; its rows and checkpoints are kept
        interrupted = isinstance(exc, KeyboardInterrupt)
        info.status = "interrupted" if interrupted else "failed"
        info.stopped = time.strftime("%Y-%m-%dT%H:%M:%S")
        folder.write_info(info)
        if interrupted:
            print(f"search interrupted after {len(table)} trial(s); continue it with: python -m nas.search --resume "
                  f"--out {out}", file=sys.stderr, flush=True)
        raise
    print_summary(options, method, table, out, info)
    return out


def driver_reference(method: Method, options: SearchOptions, info: RunInfo, folder: RunFolder) -> Probes | None:
    """The teacher's and the baseline's val quality into ``info`` (the points a candidate is drawn against, known
    before the first trial), and the probe crops' input, target and teacher pictures (once per run)."""
    device = _driver_device(options)
    teacher = load_generator(options.teacher)
    method.load_reference(device, teacher=teacher.module, teacher_fid=True)
    reference = method.reference
    info.quality_metric = reference.teacher.metric
    info.teacher_macs = getattr(teacher.space.cost(teacher.config), options.macs_convention)
    info.teacher_val = reference.teacher.as_dict()
    info.baseline_val_psnr = reference.baseline.psnr if reference.baseline else None
    try:
        probes = Probes.from_eval_set(method.val, multiple=math.lcm(method.space.multiple, teacher.space.multiple))
        probes.write_reference(teacher.module, folder.probes_dir)
    except Exception as exc:  # noqa: BLE001 (pictures never cost a search its results)
        print(f"warning: no probe pictures for this run: {exc.__class__.__name__}: {exc}", file=sys.stderr, flush=True)
        return None
    return probes


def draw_front(probes: Probes | None, method: Method, table: ResultsTable, options: SearchOptions, info: RunInfo,
               folder: RunFolder) -> None:
    """The front members' pictures on the probe crops (after each round and at the end). Pictures are for
    looking: a member that cannot be drawn is said in one line and the search goes on. Also called after each
    batch of rows while a round runs, so that a running search's front has pictures."""
    from nas.pareto import pareto_front

    if probes is None:
        return
    front = pareto_front(table.frame(), macs_column=f"macs_{options.macs_convention}", budget=options.budget,
                         higher_is_better=higher_is_better(info.quality_metric or options.quality))

    def weights(row: dict[str, Any]) -> Path | None:
        try:
            return _weights(row, folder.path)
        except UserError:  # not in Tune's storage (a multi-node cluster without --storage): no pictures
            return None

    try:
        probes.update(method, front, folder.probes_dir, weights=weights)
    except Exception as exc:  # noqa: BLE001 (pictures never cost a search its results)
        print(f"warning: the front's probe pictures were not drawn: {exc.__class__.__name__}: {exc}",
              file=sys.stderr, flush=True)


QUALITY_LABELS = {"psnr": "val PSNR (dB)", "fidelity_psnr": "val PSNR against the teacher (dB)",
                  "fid": "val FID (lower is better)"}


def quality_label(metric: str, fid: dict[str, Any] | None = None) -> str:
    """The quality axis' name; an FID's says on how many images it is."""
    label = QUALITY_LABELS[metric]
    if metric == "fid" and fid:
        label = f"val FID, {fid['images']} generated vs {fid['real_images']} real images (lower is better)"
    return label


def _driver_device(options: SearchOptions) -> str:
    # The driver (a cluster's head node) may have no GPU even when trials use them.
    return "cuda" if options.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"


def _weights(row: dict[str, Any], out: Path) -> Path | None:
    """The best student's weights, fetched from Tune's storage (where its trial's checkpoint went)."""
    from nas.tune_driver import fetch

    uri = row.get("weights")
    if not uri:
        return None
    path = fetch(uri, out / "fetched" / "student.pth")
    if not Path(path).is_file():
        raise UserError(f"the weights of trial {row['trial_id']} are not in Tune's storage ({uri}); with a "
                        "multi-node cluster give --storage a path every node shares, or a cloud URI")
    return Path(path)


def finish(method: Method, options: SearchOptions, table: ResultsTable, out: Path, info: RunInfo) -> None:
    """Pareto front into pareto.html, and the best feasible student exported into best/ (after
    ``driver_reference``); the front and the best student go into ``info``."""
    from nas.pareto import pareto_front, render_html

    frame = table.frame()
    column = f"macs_{options.macs_convention}"
    device = _driver_device(options)
    metric = info.quality_metric
    higher = higher_is_better(metric)
    fid = _fid_counts(info.teacher_val or {})
    front = pareto_front(frame, macs_column=column, budget=options.budget, teacher_macs=info.teacher_macs,
                         teacher_quality=method.reference.teacher.score, higher_is_better=higher,
                         baseline_quality=info.baseline_val_psnr if metric == "psnr" else None)
    render_html(front, out / "pareto.html", title=f"{method.space.name} / {options.method}: quality vs MACs "
                f"({len(front.candidates)} candidates, budget {format_macs(options.budget)})",
                quality_label=quality_label(metric, fid))
    feasible = front.candidates[front.candidates["feasible"].astype(str).isin(["True", "true", "1"])]
    best = None
    if len(feasible):
        row = feasible.sort_values(["quality", column], ascending=[not higher, True]).iloc[0].to_dict()
        best = {"trial_id": row["trial_id"], "config": row["config"], "macs": int(row[column]),
                "quality": float(row["quality"]),
                "trial": {k: _number(row[k]) for k in ("quality", "psnr", "ssim", "fidelity_psnr", "share",
                                                       "fid", "kid", "fid_images", "fid_real_images")}}
        best_dir = out / "best"
        report_file = best_dir / "export.json"
        done = read_json(report_file) or {}  # missing or damaged (an interrupted run): exported again
        # (ofa fine-tunes the best subnet when it exports it; students trained per trial export as they are)
        finetune_steps = None if method.trains else getattr(options.method_options, "finetune_steps", None)
        if done.get("config") != row["config"] or done.get("finetune_steps") != finetune_steps \
                or done.get("trial_id") != row["trial_id"]:
            began = time.perf_counter()
            report = method.export(row, _weights(row, out), best_dir, device=device, progress=options.progress)
            report["trial_id"] = row["trial_id"]
            atomic_write_text(report_file, json.dumps(report, indent=2) + "\n")
            best["export_seconds"] = round(time.perf_counter() - began, 1)
        exported = method.judge(load_generator(best_dir / "model.pth").module)
        best["exported"] = {"quality": exported.score, **exported.as_dict()}
        if finetune_steps is not None:  # ofa: inherited weights (the trial) -> fine-tuned (best/)
            best["inherited"] = best["trial"]
            report = json.loads(report_file.read_text())
            # a fine-tune that lost val quality is reported, and best/ keeps the inherited weights
            best["finetuned"] = {"steps": finetune_steps, **report.get("finetuned_val", best["exported"])}
            best["kept"] = report.get("kept", "finetuned")
        best["quality"] = exported.score  # what best/ holds
    info.best, info.front = best, front.front_rows["config"].tolist()


def _number(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def _fid_counts(values: dict[str, Any]) -> dict[str, int] | None:
    """The image counts behind an FID (a row, a quality's as_dict), None where there is no FID."""
    images, real = _number(values.get("fid_images")), _number(values.get("fid_real_images"))
    return None if images is None or real is None else {"images": int(images), "real_images": int(real)}


def _with_counts(value: float, values: dict[str, Any]) -> str:
    """A quality figure, with its image counts where it is an FID."""
    counts = _fid_counts(values)
    return f"{value:.3f}" + (f" ({counts['images']} generated vs {counts['real_images']} real images)"
                             if counts else "")


def print_summary(options: SearchOptions, method: Method, table: ResultsTable, out: Path,
                  info: RunInfo) -> None:
    from nas.pareto import pareto_front

    frame = table.frame()
    column = f"macs_{options.macs_convention}"
    metric = info.quality_metric or "psnr"
    fid = metric == "fid"
    front = pareto_front(frame, macs_column=column, budget=options.budget, higher_is_better=higher_is_better(metric))
    rows = front.front_rows
    ok = int((frame["status"] == "ok").sum())
    errors = int((frame["status"] == "error").sum())
    print(f"\n{ok} candidates evaluated, {errors} failed, {info.rejected} samples rejected over budget"
          + (f", {info.repaired} repaired to fit it" if info.repaired else "")
          + f" ({format_macs(options.budget)} MACs, {options.macs_convention})")
    if errors:
        for _, r in frame[frame["status"] == "error"].head(3).iterrows():
            print(f"  failed: trial {r['trial_id']} ({r['config']}): {r['error']}")
    if info.lost:
        print(f"{info.lost} trials died with a lost worker node and were replaced by new samples"
              + ("" if len(frame) >= options.trials else f"; {options.trials - len(frame)} could not be"))
    teacher, baseline = info.teacher_val or {}, info.baseline_val_psnr
    if fid and teacher.get("fid") is not None:
        print(f"teacher val FID {_with_counts(teacher['fid'], teacher)}, KID {teacher['kid']:.4g}")
    elif teacher.get("psnr") is not None:
        print(f"teacher val PSNR {teacher['psnr']:.3f}" + (f", bicubic {baseline:.3f}; share = the share of the "
                                                            "teacher's gain over bicubic a student keeps"
                                                            if baseline is not None else ""))
    weights = "inherited weights" if method.name == "ofa" else "trained students"
    print(f"Pareto front ({len(rows)} of {len(front.candidates)}; quality = {QUALITY_LABELS[metric]}, {weights}):")
    # (an FID is never shown without its image counts; the share of the teacher's PSNR gain does not apply)
    third, width = ("images (gen/real)", 17) if fid else ("share", 6)
    print(f"  {'MACs':>8}  {'quality':>8}  {third:>{width}}  {'params':>9}  {'latency':>9}  feasible  config")
    for _, r in rows.iterrows():
        counts = _fid_counts(r.to_dict())
        beside = (f"{counts['images']}/{counts['real_images']}" if counts else "") if fid else format_share(r['share'])
        print(f"  {format_macs(float(r[column])):>8}  {float(r['quality']):>8.3f}  {beside:>{width}}  "
              f"{int(r['params']):>9,}  {float(r['latency_ms'] or 0):>7.1f}ms  {str(r['feasible']):>8}  {r['config']}")
    best = info.best
    if best and "finetuned" in best:
        inherited, tuned = best["inherited"], best["finetuned"]
        share = (lambda q: "") if fid else (lambda q: f" (share {format_share(q['share'])})")  # noqa: E731
        print(f"best feasible: {best['config']}  MACs {format_macs(best['macs'])}  quality inherited "
              f"{_with_counts(inherited['quality'], inherited)}{share(inherited)} -> fine-tuned {tuned['steps']} "
              f"steps {_with_counts(tuned['quality'], tuned)}{share(tuned)}"
              + ("; the fine-tune lost quality, so best/ holds the inherited weights"
                 if best.get("kept") == "inherited" else ""))
    elif best:
        exported = best["exported"]
        print(f"best feasible: {best['config']}  MACs {format_macs(best['macs'])}  quality "
              f"{_with_counts(best['quality'], exported)}"
              + ("" if fid else f" (share {format_share(exported['share'])})"))
    counts = _fid_counts(teacher) if fid else None
    if counts and noise_note(counts["images"]):
        print(f"note: {noise_note(counts['images'])}")
    print(f"files: {out / 'trials.csv'}, {out / 'pareto.html'}, {out / 'run.json'}, {out / 'optuna.db'}"
          + (f", {out / 'best'}/" if best else ""))


# ------------------------------------------------------------------------------------------- CLI


def build_parser(method: str = "ofa") -> Parser:
    p = Parser(prog="python -m nas.search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="inception",
                   help="resnet | inception | agd | unet (spaces/<task>/NAME.yaml on the embedded default) | PATH.yaml")
    p.add_argument("--budget", help="MACs budget per image: 2.6G, 500M or 2.6e9 (required unless --resume)")
    p.add_argument("--method", default="ofa", help=f"{' | '.join(list_methods('search'))} (default ofa; "
                   "each adds its own options, listed by --method NAME --help)")
    p.add_argument("--task", default="sr4x", help="sr4x (embedded) or a data folder")
    p.add_argument("--teacher", help="teacher checkpoint (default: the shipped sr4x teacher)")
    p.add_argument("--trials", type=int, help="trials to run in all (default: the method's, 40 for ofa; with "
                   "--resume: as stored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default runs/<method>-<space>-<budget>, e.g. runs/ofa-agd-500M)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.add_argument("--sampler", default="nsga2", help="nsga2 | tpe | random")
    p.add_argument("--macs-convention", default="torchprofile", help="torchprofile (default) | fvcore")
    p.add_argument("--address", help="Ray cluster address (auto, host:port); default: RAY_ADDRESS or a local instance")
    p.add_argument("--storage", help="where trials' checkpoints and students go (Tune's storage_path): a path "
                   "every node shares, or a cloud URI such as s3://bucket/runs (default: <out>/tune, enough "
                   "on one machine)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial, fractions allowed (0.25)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failing trial before it is recorded")
    p.add_argument("--quality", default="psnr", help="what ranks candidates: psnr (val PSNR against ground truth, "
                   "else against the teacher; higher is better) | fid (val FID against the target domain's images "
                   "with the standard FID Inception; lower is better)")
    p.add_argument("--fid-weights", help=f"the FID Inception's weights ({WEIGHTS_FILE}), "
                   "read with weights_only=True (default: the torch hub cache, fetched there once)")
    p.add_argument("--fid-min-images", type=int, default=MIN_IMAGES,
                   help=f"refuse FID on fewer real or generated images (default {MIN_IMAGES})")
    p.add_argument("--no-progress", action="store_true")
    method_class = get_method(method)
    add_dataclass_arguments(p, method_class.Options, title=f"--method {method} options")
    return p


def read_run_info(out: Path) -> RunInfo:
    """``out/run.json`` of a search to resume; one line where it is missing or damaged."""
    try:
        return RunFolder(out).read_info()
    except UserError as exc:
        raise UserError(f"--resume: {exc}; the run cannot be resumed: start a new search in another --out") from None


def _stored_options(out: str) -> tuple[dict[str, Any], str]:
    stored = read_run_info(Path(out)).options
    method = stored.get("method", "ofa")
    if method not in list_methods("search"):
        raise UserError(f"--resume: {Path(out) / 'run.json'} names the method {method!r}, which is not one of "
                        f"{', '.join(list_methods('search'))}; the run cannot be resumed by this version")
    return stored, method


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m nas.search " + " ".join(argv)
    probe = Parser(add_help=False)
    probe.add_argument("--resume", action="store_true")
    probe.add_argument("--out")
    known, _ = probe.parse_known_args(argv)
    stored = None
    if known.resume:
        if not known.out:
            raise UserError("--resume needs --out (the run folder to continue)")
        stored, method = _stored_options(known.out)
    else:
        method = flag_value(argv, "--method") or "ofa"
    args = build_parser(method).parse_args(argv)
    method_class = get_method(method)
    if stored is not None:
        base_options = {k: v for k, v in stored.items() if k in {f.name for f in fields(SearchOptions)}}
        option_names = {f.name for f in fields(method_class.Options)}
        # (runs written before methods owned their options kept them with the others)
        saved = {**{k: v for k, v in stored.items() if k in option_names}, **(stored.get("method_options") or {})}
        run_file = str(Path(known.out) / "run.json")
        method_options = dataclass_from_stored(method_class.Options, saved, run_file)
        stored_options = dataclass_from_stored(SearchOptions, {**base_options, "method_options": None}, run_file)
        # the run is where --out says now (a copied or moved run folder resumes where it is)
        options = replace(stored_options, out=str(Path(known.out).resolve()), address=args.address,
                          progress=not args.no_progress, **({"trials": args.trials} if args.trials is not None else {}),
                          method_options=dataclass_from_args(method_class.Options, args, method_options))
        run_search(options, resume=True, command=command)
        return 0
    budget = parse_budget(args.budget)
    options = SearchOptions(space=args.space, budget=budget, method=method, task=args.task, teacher=args.teacher,
                            trials=method_class.default_trials if args.trials is None else args.trials,
                            seed=args.seed, out=args.out or "", sampler=args.sampler,
                            macs_convention=args.macs_convention, address=args.address, storage=args.storage,
                            gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                            max_failures=args.max_failures, progress=not args.no_progress,
                            method_options=dataclass_from_args(method_class.Options, args), quality=args.quality,
                            fid_weights=args.fid_weights, fid_min_images=args.fid_min_images)
    run_search(options, command=command)
    return 0


if __name__ == "__main__":
    run(main)
