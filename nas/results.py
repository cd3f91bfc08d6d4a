"""The one results table of a search: one row per candidate, built from what its trial produced.

Rows go first to an append-only journal (``trials.journal``, one JSON line per row, O(1) per
trial), and ``trials.csv`` is rewritten atomically from them in batches whose size grows with the
table (a tenth of its rows, at least ``MIN_BATCH``) and at the end: a rewrite costs time in
proportion to the rows, so its share per trial stays the same however long the search, and the CSV
is always readable. Reading the table replays the journal over the CSV: a driver killed between
two batches loses no row.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from nas.files import atomic_write

COLUMNS = [
    "trial_id", "method", "space", "config", "macs_torchprofile", "macs_fvcore", "params",
    "quality", "quality_metric", "share", "psnr", "ssim", "fidelity_psnr", "fid", "kid", "fid_images",
    "fid_real_images", "latency_ms", "feasible", "status", "error", "node", "seconds", "cpu_seconds", "weights",
    "params_json", "finished_at", "details_json",
]
TEXT_COLUMNS = ("trial_id", "method", "space", "config", "quality_metric", "status", "error", "node", "weights",
                "params_json", "finished_at", "details_json")
# trials.csv is rewritten after this many new rows, or a tenth of the table if more (and at the end)
MIN_BATCH = 10


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


class ResultsTable:
    """``trials.csv`` of a run: rows keyed by trial id (a retried trial is one row)."""

    def __init__(self, path: str | Path, *, min_batch: int = MIN_BATCH) -> None:
        self.path = Path(path)
        self.journal = self.path.with_suffix(".journal")
        self.min_batch = min_batch
        self.rows: dict[str, dict[str, Any]] = {}
        self._unsaved = 0  # rows in the journal only
        self.saves = 0  # how many times trials.csv was rewritten (the driver draws the front after each)
        if self.path.exists():
            import pandas as pd

            frame = pd.read_csv(self.path, dtype={c: str for c in TEXT_COLUMNS})
            for row in frame.astype(object).where(frame.notna(), None).to_dict("records"):
                if row.get("feasible") is not None:
                    row["feasible"] = str(row["feasible"]).lower() in ("true", "1")
                self.rows[str(row["trial_id"])] = {c: _clean(row.get(c)) for c in COLUMNS}
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a killed driver
                        continue
                    self.rows[str(row["trial_id"])] = {c: row.get(c) for c in COLUMNS}
                    self._unsaved += 1

    @staticmethod
    def read_frame(path: str | Path):
        """The table of ``path`` as ``ResultsTable(path).frame()`` gives it (journal replayed, a trial's last row
        kept), read by pandas in one go: a reader's path for tables of 10,000s of rows."""
        import pandas as pd

        path = Path(path)
        # the journal first: a batch written in between moves its rows into the CSV read next (the journal is
        # removed after the CSV is replaced), so a row is read twice at worst, never lost
        rows = []
        try:
            lines = path.with_suffix(".journal").read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed driver
                continue
        parts = [pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})] if path.exists() else []
        if rows:
            parts.append(pd.DataFrame(rows))
        if not parts:
            return pd.DataFrame(columns=COLUMNS)
        frame = pd.concat(parts, ignore_index=True).reindex(columns=COLUMNS)
        frame["trial_id"] = frame["trial_id"].astype(str)
        frame = frame.drop_duplicates("trial_id", keep="last").reset_index(drop=True)
        if frame["feasible"].notna().any():
            frame["feasible"] = frame["feasible"].map(lambda v: None if v is None or v != v
                                                      else str(v).lower() in ("true", "1"))
        return frame

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self.rows

    def add(self, row: dict[str, Any]) -> bool:
        """Record (or replace) the row of ``row['trial_id']``: one journal line now, the CSV in batches;
        says whether this row completed a batch (the CSV was rewritten)."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        row = {c: row.get(c) for c in COLUMNS}
        self.rows[str(row["trial_id"])] = row
        with open(self.journal, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._unsaved += 1
        if not self.path.exists() or self._unsaved >= max(self.min_batch, len(self.rows) // 10):
            self.save()
            return True
        return False

    def frame(self):
        import pandas as pd

        return pd.DataFrame(list(self.rows.values()), columns=COLUMNS)

    def save(self) -> None:
        """Rewrite trials.csv atomically from every row; the journal then starts again."""
        if not self._unsaved and self.path.exists():
            return
        atomic_write(self.path, lambda tmp: self.frame().to_csv(tmp, index=False))
        self.journal.unlink(missing_ok=True)
        self._unsaved = 0
        self.saves += 1


def now() -> str:
    """Wall-clock time with milliseconds (throughput is read off these stamps)."""
    stamp = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stamp)) + f".{int(stamp % 1 * 1000):03d}"


def row_from_result(trial_id: str, method, result: dict[str, Any], *, params: dict[str, Any], budget: int,
                    convention: str, weights: str | None) -> dict[str, Any]:
    """A row from a trial's final result (its Candidate): config, exact cost, quality, weights."""
    macs = result[f"macs_{convention}"]
    return {
        "trial_id": trial_id, "method": method.name, "space": method.space.name, "config": result["architecture"],
        "macs_torchprofile": result["macs_torchprofile"], "macs_fvcore": result["macs_fvcore"],
        "params": result["params"], "quality": result["quality"], "quality_metric": result.get("quality_metric"),
        "share": result.get("share"), "psnr": result.get("psnr"), "ssim": result.get("ssim"),
        "fidelity_psnr": result.get("fidelity_psnr"), "fid": result.get("fid"), "kid": result.get("kid"),
        # an FID is never recorded without the image counts it was computed on
        "fid_images": result.get("fid_images"), "fid_real_images": result.get("fid_real_images"),
        "latency_ms": result.get("latency_ms"),
        "feasible": macs <= budget, "status": "ok", "node": result.get("node_ip"),
        "seconds": round(result.get("time_total_s", 0.0), 3), "cpu_seconds": result.get("cpu_seconds"),
        "weights": weights, "params_json": json.dumps(params),
        "finished_at": now(),
        # what the method says of the candidate (kd's factor, dmask's frozen_at, agd's projected, ...)
        "details_json": json.dumps({k.removeprefix("extra_"): v for k, v in result.items() if k.startswith("extra_")},
                                   default=str),
    }
