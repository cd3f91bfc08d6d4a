"""What the dashboard knows of the runs under its folder: read from the run folders' files (never written),
re-read only when a file's modification time or size changed, and never raising: what cannot be read
becomes a message shown in the page."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from evaluators.quality import higher_is_better
from nas.files import read_json
from nas.pareto import ParetoFront, hypervolume_history, pareto_front
from nas.results import ResultsTable
from nas.runs import STALE_SECONDS, RunFolder, RunInfo, find_runs
from spaces.errors import UserError

# The metrics a front can be drawn for: (column, label, higher is better)
METRICS = {
    "quality": "the run's quality",
    "psnr": "val PSNR (dB)",
    "ssim": "val SSIM",
    "fidelity_psnr": "val PSNR against the teacher (dB)",
    "share": "share of the teacher's gain",
}
CONVENTIONS = ("torchprofile", "fvcore")


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        s = path.stat()
    except OSError:
        return None
    return (s.st_mtime_ns, s.st_size)


def signature(folder: RunFolder) -> tuple:
    """What changes when a run writes anything the dashboard shows (the heartbeat aside: only its age matters)."""
    probes = folder.probes_dir / "trials"
    beat = folder.heartbeat()
    # a heartbeat's refresh changes nothing shown; its going stale does
    fresh = beat is not None and time.time() - beat.time <= STALE_SECONDS
    return (_stat(folder.info_file), _stat(folder.trials_file), _stat(folder.trials_file.with_suffix(".journal")),
            _stat(probes), tuple(_stat(p) for p in sorted(folder.trials_dir.glob("*/progress.csv"))), fresh)


@dataclass
class RunView:
    """One run as the page shows it."""

    key: str  # its path under the dashboard's folder (posix), or "." for the folder itself
    folder: RunFolder
    info: RunInfo | None
    table: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    _fronts: dict[tuple[str, str], ParetoFront] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The run's name as shown: its key, or its folder's name where the dashboard serves that one run."""
        return self.folder.path.name if self.key == "." else self.key

    @property
    def metric(self) -> str:
        """The run's quality metric: run.json's, else the table's (runs that wrote it only when they finished),
        else the metric the run was asked for."""
        if self.info and self.info.quality_metric:
            return self.info.quality_metric
        named = self.table["quality_metric"].dropna() if "quality_metric" in self.table else ()
        if len(named):
            return str(named.iloc[0])
        return str(self.info.options.get("quality") or "psnr") if self.info else "psnr"

    def state(self) -> str:
        return self.folder.state(self.info) if self.info else "unreadable"

    def ok(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "ok"] if len(self.table) else self.table

    def higher_is_better(self, metric: str) -> bool:
        return higher_is_better(self.metric) if metric == "quality" else True

    def front(self, metric: str = "quality", convention: str = "torchprofile") -> ParetoFront | None:
        """The front of ``metric`` (computed once per metric and convention while the table is unchanged)."""
        if (metric, convention) not in self._fronts:
            if not len(self.table) or metric not in self.table or not self.table[metric].notna().any():
                return None
            info = self.info or RunInfo()
            psnr_like = metric == "psnr" or (metric == "quality" and self.metric == "psnr")
            teacher = (info.teacher_val or {})
            teacher_quality = teacher.get(self.metric if metric == "quality" else metric)
            if metric == "share":
                teacher_quality = 1.0 if info.baseline_val_psnr is not None else None
            teacher_quality = number(teacher_quality)
            if teacher_quality is not None and not math.isfinite(teacher_quality):  # its fidelity to itself
                teacher_quality = None
            own = convention == info.convention  # the budget and the teacher's MACs are in the run's convention
            self._fronts[(metric, convention)] = pareto_front(
                self.table.assign(**{metric: pd.to_numeric(self.table[metric], errors="coerce")}),
                macs_column=f"macs_{convention}", budget=info.budget if own else None,
                teacher_macs=info.teacher_macs if own else None,
                teacher_quality=teacher_quality, higher_is_better=self.higher_is_better(metric),
                baseline_quality=(info.baseline_val_psnr if psnr_like else 0.0 if metric == "share" and
                                  info.baseline_val_psnr is not None else None),
                quality_column=metric)
        return self._fronts[(metric, convention)]

    def hypervolume(self, metric: str = "quality") -> tuple[list[float], str]:
        """Hypervolume after each finished trial (by finishing time), and what its reference point is (MACs in the
        run's convention, where its budget is)."""
        front = self.front(metric, self.info.convention if self.info else "torchprofile")
        if front is None or self.info is None or self.info.budget is None:
            return [], ""
        rows = front.candidates.sort_values("finished_at", kind="stable")
        higher = front.higher_is_better
        if front.baseline_quality is not None:
            floor, what = front.baseline_quality, "bicubic"
        else:
            floor = rows["quality"].min() if higher else rows["quality"].max()
            floor, what = float(floor), "the worst candidate"
        history = hypervolume_history(rows[front.macs_column] / 1e9, rows["quality"], ref_macs=self.info.budget / 1e9,
                                      ref_quality=floor, higher_is_better=higher)
        return history, f"reference point: {what}'s quality ({floor:.4g}) and the budget ({self.info.budget / 1e9:.3g}G)"

    def counts(self) -> dict[str, int]:
        status = self.table["status"] if len(self.table) else pd.Series(dtype=object)
        info = self.info or RunInfo()
        return {"finished": int((status == "ok").sum()), "failed": int((status == "error").sum()),
                "rejected": info.rejected, "lost": info.lost}

    def best(self) -> dict[str, Any] | None:
        """The best feasible candidate so far by the run's quality (its share beside it)."""
        ok = self.ok()
        if not len(ok) or self.info is None:
            return None
        feasible = ok[ok["feasible"].astype(str).str.lower().isin(["true", "1"])]
        if not len(feasible):
            return None
        quality = pd.to_numeric(feasible["quality"], errors="coerce").dropna()  # a diverged student has none
        if not len(quality):
            return None
        row = feasible.loc[quality.idxmax() if higher_is_better(self.metric) else quality.idxmin()]
        return {"quality": float(row["quality"]), "share": number(row.get("share")), "config": row["config"],
                "trial_id": str(row["trial_id"])}

    def pictures(self, trial_id: str) -> dict[str, Any] | None:
        """probe.json of a candidate with pictures, None where it has none."""
        return read_json(self.folder.probes_dir / "trials" / trial_id / "probe.json")

    def probe_crops(self) -> list[dict[str, Any]]:
        data = read_json(self.folder.probes_dir / "probes.json") or {}
        return data.get("crops", []) if isinstance(data, dict) else []

    def trial_progress(self) -> list[dict[str, Any]]:
        """Training trials' progress (steps, loss, time) and whether each is still in flight (a trial of a run
        that is not running is not, whatever its record says)."""
        out, running = [], self.state() == "running"
        root = self.folder.trials_dir
        if not root.is_dir():
            return out
        finished = set(self.table["trial_id"].astype(str)) if len(self.table) else set()
        for record in sorted(root.glob("*/progress.csv")):
            try:
                progress = pd.read_csv(record)
            except (OSError, ValueError, pd.errors.ParserError):
                continue
            if not len(progress):
                continue
            info = read_json(record.parent / "trial.json") or {}
            trial_id = record.parent.name
            out.append({"trial_id": trial_id, "progress": progress,
                        "in_flight": running and trial_id not in finished and info.get("status") == "running"})
        return out


def number(value: Any) -> float | None:
    """``value`` as a float; None where it is none (None, NaN read back from a table, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number


def read_run(folder: RunFolder, key: str) -> RunView:
    """A run as it is now: what cannot be read is in ``problems``, never raised."""
    problems: list[str] = []
    info = None
    try:
        info = folder.read_info()
    except UserError as exc:
        problems.append(str(exc))
    table = pd.DataFrame(columns=["trial_id", "status", "quality"])
    if folder.trials_file.exists() or folder.trials_file.with_suffix(".journal").exists():
        try:
            table = ResultsTable.read_frame(folder.trials_file)
        except Exception as exc:  # noqa: BLE001 (a damaged table of any kind is a message, not a crash)
            problems.append(f"{folder.trials_file} could not be read ({exc.__class__.__name__}: {exc}); "
                            "the search rewrites it whole at its next batch of trials")
    if info is not None and not (table["status"] == "ok").any():
        problems.append(f"{folder.name}: no finished trials yet")
    for column in ("quality", "psnr", "ssim", "fidelity_psnr", "share", "macs_torchprofile", "macs_fvcore",
                   "params", "latency_ms"):
        if column in table:
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return RunView(key, folder, info, table, problems)


class RunsCache:
    """The runs under one folder; a run is re-read only when its files changed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self._views: dict[str, tuple[tuple, RunView]] = {}

    def key(self, folder: RunFolder) -> str:
        rel = os.path.relpath(folder.path, self.root)  # (a linked run folder is named by its link)
        return Path(rel).as_posix()

    def runs(self) -> list[RunView]:
        views = []
        for folder in find_runs(self.root):
            key = self.key(folder)
            sig = signature(folder)
            cached = self._views.get(key)
            if cached is None or cached[0] != sig:
                cached = (sig, read_run(folder, key))
                self._views[key] = cached
            views.append(cached[1])
        return views

    def signature(self) -> tuple:
        """Of every run (and which runs there are): unchanged means nothing to re-send."""
        return tuple((self.key(f), signature(f)) for f in find_runs(self.root))

    def get(self, key: str) -> RunView | None:
        for view in self.runs():
            if view.key == key:
                return view
        return None
