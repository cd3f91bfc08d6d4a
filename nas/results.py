"""The one results table of a search: one row per evaluated candidate, written atomically as CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from nas.files import atomic_write

COLUMNS = [
    "trial_id", "method", "space", "config", "macs_torchprofile", "macs_fvcore", "params",
    "quality", "share", "psnr", "ssim", "fidelity_psnr", "latency_ms", "feasible", "status", "error",
    "node", "seconds", "finished_at",
]


class ResultsTable:
    """``trials.csv`` of a run: rows keyed by trial id (a retried trial is one row), atomic rewrites."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            text_columns = {c: str for c in ("trial_id", "method", "space", "config", "status", "error", "node",
                                             "finished_at")}
            frame = pd.read_csv(self.path, dtype=text_columns)
            for row in frame.astype(object).where(frame.notna(), None).to_dict("records"):
                if row["feasible"] is not None:
                    row["feasible"] = str(row["feasible"]).lower() in ("true", "1")
                self.rows[str(row["trial_id"])] = row

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self.rows

    def add(self, row: dict[str, Any]) -> None:
        """Record (or replace) the row of ``row['trial_id']`` and rewrite the file atomically."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        self.rows[str(row["trial_id"])] = {c: row.get(c) for c in COLUMNS}
        self.save()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows.values()), columns=COLUMNS)

    def save(self) -> None:
        atomic_write(self.path, lambda tmp: self.frame().to_csv(tmp, index=False))
