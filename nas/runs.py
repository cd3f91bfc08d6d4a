"""A search's run folder, typed: what ``nas.search`` writes and ``nas.dashboard`` reads.

    runs/NAME/run.json        RunInfo: options, status, the teacher's and bicubic's reference, the summary
    runs/NAME/heartbeat.json  Heartbeat: refreshed by the driver every HEARTBEAT_SECONDS while it runs
    runs/NAME/trials.csv      the results table (nas.results), with trials.journal not yet folded in
    runs/NAME/trials/ID/      a training trial's record and progress.csv
    runs/NAME/probes/         pictures of fixed val crops (nas.probes)

The heartbeat has its own file so that the driver's thread that refreshes it never races the
writes of run.json. A run whose status is "running" while its heartbeat is older than
STALE_SECONDS lost its driver (killed, or its machine died): it shows as stale.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nas.files import atomic_write_text
from spaces.errors import UserError

STATUSES = ("running", "finished", "failed", "interrupted")
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


@dataclass
class Heartbeat:
    time: float
    pid: int
    host: str

    @classmethod
    def now(cls) -> Heartbeat:
        return cls(time=time.time(), pid=os.getpid(), host=socket.gethostname())


@dataclass
class RunInfo:
    """``run.json``. The reference (teacher, bicubic) is measured when the run starts, so that a running
    search's candidates can be drawn against it; ``best`` and ``front`` are set when it finishes."""

    command: str = ""
    started: str = ""
    status: str = "running"
    protocol: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    space: str | None = None
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    repaired: int = 0
    lost: int = 0
    fid: dict[str, Any] | None = None
    quality_metric: str | None = None
    teacher_macs: float | None = None
    teacher_val: dict[str, Any] | None = None
    baseline_val_psnr: float | None = None
    finished: str | None = None
    stopped: str | None = None
    best: dict[str, Any] | None = None
    front: list[str] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def method(self) -> str:
        return str(self.options.get("method", "ofa"))

    @property
    def budget(self) -> float | None:
        value = self.options.get("budget")
        return float(value) if value is not None else None

    @property
    def convention(self) -> str:
        return str(self.options.get("macs_convention", "torchprofile"))


class RunFolder:
    """The files of one run folder, by name."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.info_file = self.path / "run.json"
        self.heartbeat_file = self.path / "heartbeat.json"
        self.trials_file = self.path / "trials.csv"
        self.trials_dir = self.path / "trials"
        self.probes_dir = self.path / "probes"

    @property
    def name(self) -> str:
        return self.path.name

    def is_run(self) -> bool:
        return self.info_file.is_file()

    def read_info(self) -> RunInfo:
        """run.json; a UserError names the file where it is missing or damaged."""
        if not self.info_file.is_file():
            raise UserError(f"{self.path} holds no search (no run.json)")
        try:
            data = json.loads(self.info_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{self.info_file} is damaged ({exc.__class__.__name__}): not the JSON a search writes")
        if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
            raise UserError(f"{self.info_file} is damaged: not the JSON a search writes (no options)")
        return RunInfo.from_dict(data)

    def write_info(self, info: RunInfo) -> None:
        atomic_write_text(self.info_file, json.dumps(info.to_dict(), indent=2, default=str) + "\n")

    def beat(self) -> None:
        atomic_write_text(self.heartbeat_file, json.dumps(asdict(Heartbeat.now())) + "\n")

    def heartbeat(self) -> Heartbeat | None:
        try:
            return Heartbeat(**json.loads(self.heartbeat_file.read_text()))
        except (OSError, ValueError, TypeError):  # none yet, or a run written before heartbeats
            return None

    def state(self, info: RunInfo, *, now: float | None = None) -> str:
        """The run's status, or "stale" for a running run whose driver stopped refreshing its heartbeat."""
        if info.status != "running":
            return info.status
        beat = self.heartbeat()
        age = (time.time() if now is None else now) - (beat.time if beat else self._info_time())
        return "stale" if age > STALE_SECONDS else "running"

    def _info_time(self) -> float:
        try:
            return self.info_file.stat().st_mtime
        except OSError:
            return 0.0


class HeartbeatThread:
    """Refreshes a run's heartbeat from the driver while the block runs (a daemon thread: it dies with
    the driver, which is the point)."""

    def __init__(self, folder: RunFolder, every: float = HEARTBEAT_SECONDS) -> None:
        self.folder, self.every = folder, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> HeartbeatThread:
        self.folder.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.folder.beat()
            except OSError:  # a full disk: the run goes on; it may show as stale
                pass


def find_runs(root: str | Path) -> list[RunFolder]:
    """Run folders at or under ``root`` (two levels: runs/NAME and runs/GROUP/NAME), by name."""
    root = Path(root)
    if RunFolder(root).is_run():
        return [RunFolder(root)]
    found = [RunFolder(p.parent) for p in sorted(root.glob("*/run.json")) + sorted(root.glob("*/*/run.json"))]
    return sorted(found, key=lambda r: str(r.path))
