"""The dashboard at scale: a run of 10,000 trials (made from a real run's rows, with spread MACs and quality),
timed on the server (first render of every view; a poll with nothing new) and in headless Chromium (from
navigation to the 10,000 WebGL points drawn, software rendering), side by side with a 100-trial run.

    python bench/dashboard.py [--trials 10000] [--base runs/demo-...] [--no-browser]

Without --base it makes its base run first (a 6-trial search on the shipped sr4x supernet, ~2 min).
Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from nas.cli import Parser, at_least, run
from nas.dashboard import browser
from nas.dashboard.app import render
from nas.dashboard.data import RunsCache
from nas.results import ResultsTable
from nas.runs import RunFolder


def grow(base: Path, out: Path, trials: int, seed: int = 0) -> None:
    """A copy of ``base`` whose table has ``trials`` rows: its rows repeated with MACs and quality spread."""
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("tune", "best", "fetched", "optuna.db"))
    source = list(ResultsTable(out / "trials.csv").rows.values())
    rng = np.random.default_rng(seed)
    budget = RunFolder(out).read_info().budget or 1e9
    (out / "trials.csv").unlink()
    (out / "trials.journal").unlink(missing_ok=True)
    table = ResultsTable(out / "trials.csv", min_batch=trials + 1)  # one rewrite at the end
    for i in range(trials):
        row = dict(source[i % len(source)])
        macs = float(rng.uniform(0.2, 1.2) * budget)
        quality = float(row["quality"]) + 0.4 * np.log(macs / budget) + float(rng.normal(0, 0.05))
        row.update(trial_id=f"t{i:05d}", macs_torchprofile=macs, macs_fvcore=0.9 * macs, quality=quality, psnr=quality,
                   feasible=macs <= budget, finished_at=f"2026-01-01T00:00:00.{i:05d}")
        table.rows[row["trial_id"]] = row
    table._unsaved = trials
    table.save()


def server_times(root: Path, repeats: int) -> dict[str, float]:
    first, polls = [], []
    for _ in range(repeats):
        cache = RunsCache(root)
        began = time.perf_counter()
        views = render(cache.runs(), "quality", "torchprofile", ["log"], None)
        json.dumps(views[0].to_plotly_json(), default=str)  # what Dash sends: the figure serialised
        first.append(time.perf_counter() - began)
        known = repr(cache.signature())
        began = time.perf_counter()
        unchanged = repr(cache.signature()) == known
        polls.append(time.perf_counter() - began)
        assert unchanged
    return {"first render (s)": statistics.median(first), "poll, nothing new (s)": statistics.median(polls)}


def browser_time(root: Path, points: int) -> float | None:
    """Seconds from navigation to every candidate's point drawn; None without Chromium."""
    if not browser.available():
        return None
    from werkzeug.serving import make_server

    from nas.dashboard.app import build_app

    server = make_server("127.0.0.1", 0, build_app(root).server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = browser.open_chrome()
    count = ("const gd = document.querySelector('#pareto .js-plotly-plot'); if (!gd || !gd._fullData) return -1;"
             "return gd._fullData.filter(t => /candidates|over the budget/.test(t.name))"
             ".reduce((n, t) => n + t.x.length, 0);")
    try:
        began = time.perf_counter()
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        while driver.execute_script(count) != points:
            if time.perf_counter() - began > 120:
                return float("nan")
            time.sleep(0.05)
        return time.perf_counter() - began
    finally:
        driver.quit()
        server.shutdown()


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=at_least(10), default=10_000)
    p.add_argument("--base", help="a finished run folder to grow (default: a 6-trial search made here)")
    p.add_argument("--repeats", type=at_least(1), default=3)
    p.add_argument("--no-browser", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.base) if args.base else None
        if base is None:
            from evaluators.macs import parse_macs
            from nas.search import SearchOptions, run_search
            from nas.methods.ofa import OfaOptions

            base = run_search(SearchOptions(space="inception", budget=parse_macs("0.5G"), trials=6, out=f"{tmp}/base",
                                            progress=False, method_options=OfaOptions(finetune_steps=0)),
                              command="bench")
        print(f"{'trials':>8}{'first render, server (s)':>28}{'poll, nothing new (s)':>24}{'browser: points drawn (s)':>28}")
        for trials in (100, args.trials):
            root = Path(tmp) / f"runs-{trials}"
            grow(base, root / "run", trials)
            times = server_times(root, args.repeats)
            shown = None if args.no_browser else browser_time(root, trials)
            print(f"{trials:>8}{times['first render (s)']:>28.3f}{times['poll, nothing new (s)']:>24.4f}"
                  f"{'n/a' if shown is None else f'{shown:.2f}':>28}")


if __name__ == "__main__":
    run(main)
