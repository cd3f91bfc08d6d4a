"""The run folder (nas.runs), the hypervolume, and the dashboard: its reading of run folders and its views on a
real tiny search's run, then the served page in headless Chromium."""

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nas.dashboard.app import build_app, csv_of, details, grid, runs_rows, trial_page
from nas.dashboard.data import RunsCache
from nas.pareto import hypervolume, hypervolume_history
from nas.results import ResultsTable
from nas.runs import STALE_SECONDS, RunFolder, RunInfo
from spaces.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- run folder


def test_run_state_comes_from_status_and_heartbeat(tmp_path):
    folder = RunFolder(tmp_path / "run")
    info = RunInfo(command="python -m nas.search", options={"method": "ofa", "budget": 5e8})
    folder.write_info(info)
    read = folder.read_info()
    assert read == info and read.method == "ofa" and read.budget == 5e8
    folder.beat()
    assert folder.state(read) == "running"
    assert folder.state(read, now=time.time() + STALE_SECONDS + 1) == "stale"  # its driver stopped refreshing
    read.status = "interrupted"
    assert folder.state(read, now=time.time() + 10 * STALE_SECONDS) == "interrupted"
    (tmp_path / "run" / "run.json").write_text('{"options": ')
    with pytest.raises(UserError, match="run.json is damaged"):
        folder.read_info()


def test_hypervolume_by_hand():
    # budget 4, floor 0: points (1, 2) and (3, 3) dominate 2 x (3 - 1) + 3 x (4 - 3) = 7
    assert hypervolume([1, 3], [2, 3], ref_macs=4, ref_quality=0) == pytest.approx(7)
    # a dominated point, a point over the budget and one under the floor add nothing
    assert hypervolume([1, 3, 2, 5, 0.5], [2, 3, 1, 9, -1], ref_macs=4, ref_quality=0) == pytest.approx(7)
    # lower is better (FID): the same area mirrored
    assert hypervolume([1, 3], [8, 7], ref_macs=4, ref_quality=10, higher_is_better=False) == pytest.approx(7)
    history = hypervolume_history([3, 2, 1, 3.5], [3, 1, 2, 0.5], ref_macs=4, ref_quality=0)
    assert history == pytest.approx([3, 4, 7, 7])


# ------------------------------------------------------------------------------------- on a real run


def _copy(tiny_run, tmp_path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run[0], runs / "tiny")
    return runs


@pytest.mark.xdist_group("ray")
def test_dashboard_reads_a_run_and_shows_its_front_pictures(tiny_run, tmp_path):
    runs = _copy(tiny_run, tmp_path)
    cache = RunsCache(runs)
    (view,) = cache.runs()
    table = pd.read_csv(runs / "tiny" / "trials.csv", dtype={"trial_id": str})
    row = runs_rows([view])[0]
    assert row["status"] == "finished" and row["finished"] == len(table) and row["method"] == "ofa"
    assert float(row["best"]) == pytest.approx(table["quality"].max(), abs=1e-3)
    assert cache.runs()[0] is view  # nothing changed: nothing read again
    for metric in ("quality", "psnr", "ssim", "fidelity_psnr"):
        front = view.front(metric)
        assert front is not None and len(front.front) >= 1
        best = front.front_rows["quality"].max()
        assert best == pytest.approx(table[metric if metric != "quality" else "quality"].max())
    history, note = view.hypervolume()
    assert len(history) == len(table) and history == sorted(history) and "bicubic" in note
    member = view.front().front_rows.iloc[0]
    shown = str(details(view, str(member["trial_id"]), 2))
    assert f"tiny/probes/trials/{member['trial_id']}/student_0.png" in shown and "width=256" in shown
    loser = next(t for t in table["trial_id"] if t not in set(view.front().front_rows["trial_id"]))
    assert "only members of the run's Pareto front get pictures" in str(details(view, loser, 1))
    chosen = [(view, str(t), float(m) / 1e9) for t, m in view.front().front_rows[["trial_id", "macs_torchprofile"]]
              .values[::-1]]
    cells = str(grid(chosen, 1))
    positions = [cells.index(f"trials/{t}/student_0") for t, _ in sorted(((c[1], c[2]) for c in chosen),
                                                                         key=lambda c: c[1])]
    assert positions == sorted(positions)  # columns by MACs, after the teacher's
    # a trials.csv cut short in the middle of a quoted field: a message, not an exception
    text = (runs / "tiny" / "trials.csv").read_text()
    (runs / "tiny" / "trials.csv").write_text(text[: text.index('"{') + 5])
    (view,) = cache.runs()
    assert any("could not be read" in p for p in view.problems) and view.front() is None


@pytest.mark.xdist_group("ray")
def test_image_route_serves_pictures_and_refuses_paths_outside_the_runs(tiny_run, tmp_path):
    runs = _copy(tiny_run, tmp_path)
    (tmp_path / "secret.png").write_bytes(b"\x89PNG private")
    (runs / "tiny" / "probes" / "link.png").symlink_to(tmp_path / "secret.png")
    client = build_app(runs).server.test_client()
    assert client.get("/files/tiny/probes/input_0.png").data.startswith(b"\x89PNG")
    for path in ("/files/../secret.png", "/files/tiny/../../secret.png", "/files/%2e%2e/secret.png",
                 "/files/tiny/probes/link.png", "/files/tiny/run.json", "/files//etc/passwd"):
        answer = client.get(path)
        # refused by the route, or not the route's at all (Dash's page): never the file
        assert answer.status_code == 404 or b"<html" in answer.data, path
        assert b"PNG private" not in answer.data and b"root:x:" not in answer.data
        assert (runs / "tiny" / "run.json").read_bytes() not in answer.data


def test_trial_table_is_filtered_sorted_and_paged_on_the_server(tmp_path):
    """DataTable's filter language on the server: numbers compare as numbers, text contains; then a page."""
    (tmp_path / "run").mkdir()
    table = ResultsTable(tmp_path / "run" / "trials.csv")
    for i in range(40):
        table.add({"trial_id": f"t{i:02d}", "quality": 20.0 + i / 10, "status": "error" if i % 10 == 3 else "ok",
                   "error": "CUDA out of memory" if i % 10 == 3 else None, "config": f"c{i}",
                   "macs_torchprofile": 1e6 * (40 - i), "feasible": True})
    table.save()
    RunFolder(tmp_path / "run").write_info(RunInfo(options={"budget": 1e8}))
    (view,) = RunsCache(tmp_path).runs()
    rows, pages = trial_page([view], 0, 15, [], "")
    assert pages == 3 and len(rows) == 15 and rows[0]["run"] == "run"
    rows, pages = trial_page([view], 0, 15, [{"column_id": "quality", "direction": "desc"}], "{quality} s> 22.5")
    assert [r["trial_id"] for r in rows] == [f"t{i:02d}" for i in range(39, 25, -1)] + [] and pages == 1
    rows, _ = trial_page([view], 0, 15, [], '{error} icontains "memory" && {quality} >= 21')
    assert [r["trial_id"] for r in rows] == ["t13", "t23", "t33"]
    rows, _ = trial_page([view], 1, 15, [{"column_id": "macs_torchprofile", "direction": "asc"}], "{nonsense} > 1")
    assert [r["trial_id"] for r in rows][:2] == ["t24", "t23"]  # an unknown column filters nothing


def test_pareto_plot_marks_infeasible_leaves_out_failed_and_draws_the_references(tmp_path):
    from nas.dashboard import figures

    (tmp_path / "run").mkdir()
    table = ResultsTable(tmp_path / "run" / "trials.csv")
    rows = [("a", 1e8, 25.0, "ok"), ("b", 2e8, 26.0, "ok"), ("c", 3e8, 25.5, "ok"), ("d", 6e8, 27.0, "ok"),
            ("e", 1e8, None, "error")]
    for trial_id, macs, quality, status in rows:
        table.add({"trial_id": trial_id, "macs_torchprofile": macs, "quality": quality, "psnr": quality,
                   "status": status, "config": trial_id, "feasible": macs <= 5e8 if quality else None,
                   "finished_at": trial_id, "error": None if quality else "boom"})
    table.save()
    RunFolder(tmp_path / "run").write_info(RunInfo(options={"budget": 5e8}, quality_metric="psnr", teacher_macs=2e9,
                                                   teacher_val={"psnr": 27.5}, baseline_val_psnr=24.5))
    (view,) = RunsCache(tmp_path).runs()
    fig = figures.pareto([view], "quality", "torchprofile", True)
    traces = {t.name: t for t in fig.data}
    assert len(traces["candidates"].x) == 3 and len(traces["over the budget"].x) == 1  # e (failed) not drawn
    assert traces["over the budget"].marker.symbol == "x" and list(traces["Pareto front"].customdata[:, 4]) == ["a", "b", "d"]
    assert list(traces["teacher"].x) == [2.0] and fig.layout.xaxis.type == "log"
    lines = {(s.type, s.x0, s.y0) for s in fig.layout.shapes}
    assert ("line", 0.5, 0) in lines and any(y == 24.5 for _, _, y in lines)  # budget and bicubic
    history, _ = view.hypervolume()
    # a alone: 0.4G x 0.5 dB; with b: 0.1 x 0.5 + 0.3 x 1.5; c is dominated, d over the budget
    assert history == pytest.approx([0.2, 0.5, 0.5, 0.5])
    front = pd.read_csv(io.StringIO(csv_of([view], True)))
    assert list(front["trial_id"]) == ["a", "b", "d"] and set(front["run"]) == {"run"}
    assert len(pd.read_csv(io.StringIO(csv_of([view], False)))) == 5


def _synthetic_run(folder, rows, info):
    folder.mkdir(parents=True)
    table = ResultsTable(folder / "trials.csv")
    for row in rows:
        table.add(row)
    table.save()
    RunFolder(folder).write_info(info)


def test_odd_rows_and_links_give_messages_not_errors(tmp_path):
    """A diverged student (NaN quality), a failed trial without MACs, the front's CSV by another metric, links
    that name a run by its label or a path as a trial, a linked run folder, unticking every run, and an FID run
    written before run.json said its metric."""
    from nas.dashboard.app import linked, runs_state

    runs = tmp_path / "runs"
    _synthetic_run(runs / "a", [
        {"trial_id": "ok1", "macs_torchprofile": 1e8, "quality": 25.0, "share": 0.4, "psnr": 25.0, "status": "ok",
         "feasible": True, "config": "c1", "finished_at": "1"},
        {"trial_id": "nan", "macs_torchprofile": 2e8, "quality": float("nan"), "status": "ok", "feasible": True,
         "config": "c2", "finished_at": "2"},
        {"trial_id": "failed", "status": "error", "error": "CUDA out of memory", "config": "c3", "finished_at": "3"}],
        RunInfo(options={"budget": 5e8}, quality_metric="psnr", started="2026-01-01"))
    (view,) = RunsCache(runs).runs()
    assert view.best()["trial_id"] == "ok1"
    _synthetic_run(runs / "b", [{"trial_id": "n", "macs_torchprofile": 1e8, "quality": float("nan"), "status": "ok",
                                 "feasible": True, "config": "c", "finished_at": "1"}],
                   RunInfo(options={"budget": 5e8}, started="2026-01-02"))
    assert RunsCache(runs).runs()[1].best() is None and runs_rows(RunsCache(runs).runs())[1]["best"] == ""
    shown = str(details(view, "failed", 1))
    assert "MACs n/a" in shown and "CUDA out of memory" in shown
    by_share = pd.read_csv(io.StringIO(csv_of([view], True, "share")))
    assert list(by_share["quality"]) == [25.0] and list(by_share["share"]) == [0.4]  # the table's own columns
    cache = RunsCache(runs)
    assert linked(cache, "?run=a&trial=best") == ("a", "ok1")
    assert linked(cache, "?trial=../../etc") is None and linked(cache, "?trial=x/y") is None
    assert RunsCache(runs / "a").get(".") is not None and linked(RunsCache(runs / "a"), "?run=a&trial=ok1") == (".", "ok1")
    assert runs_state(cache, None)[1] == [1] and runs_state(cache, set())[1] == []  # newest first; unticked stays
    # a run folder linked in from elsewhere keeps its name, and its pictures are served
    elsewhere = tmp_path / "elsewhere" / "c"
    _synthetic_run(elsewhere, [], RunInfo(options={"budget": 5e8, "quality": "fid"}))
    (elsewhere / "probes").mkdir()
    (elsewhere / "probes" / "input_0.png").write_bytes(b"\x89PNG linked")
    (runs / "c").symlink_to(elsewhere)
    cache = RunsCache(runs)
    assert [r.key for r in cache.runs()] == ["a", "b", "c"]
    assert build_app(runs).server.test_client().get("/files/c/probes/input_0.png").data == b"\x89PNG linked"
    # an FID run whose run.json predates its quality_metric: lower is better all the same
    assert cache.get("c").metric == "fid" and not cache.get("c").higher_is_better("quality")


def test_remaining_time_of_a_trial_in_flight():
    from nas.dashboard.figures import remaining

    now = time.time()
    progress = pd.DataFrame({"time": [now - 100, now - 50, now], "step": [10, 20, 30], "steps": [130] * 3})
    assert remaining(progress) == "step 30/130, about 8.3 min left"  # 10 steps per 50 s, 100 steps to go


def test_empty_folder_and_bad_arguments(tmp_path):
    assert RunsCache(tmp_path).runs() == []
    done = subprocess.run([sys.executable, "-m", "nas.dashboard", str(tmp_path / "missing")], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 2 and "is not a folder" in done.stderr and "Traceback" not in done.stderr
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "nas.dashboard", str(tmp_path), "--port", str(port)],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------- a browser

@pytest.fixture
def browser():
    from nas.dashboard.browser import MISSING, available, open_chrome

    if not available():
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    driver = open_chrome(console_log=True)
    yield driver
    driver.quit()


def _wait(condition, timeout=90.0, what=""):  # generous: a busy CI machine renders slowly (it bounds failures only)
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


POINTS = """const gd = document.querySelector('#pareto .js-plotly-plot');
if (!gd || !gd._fullData) return -1;
return gd._fullData.filter(t => /candidates|over the budget/.test(t.name)).reduce((n, t) => n + t.x.length, 0);"""


@pytest.mark.xdist_group("ray")
def test_dashboard_in_a_browser(tiny_run, tmp_path, browser, capsys):
    """Loads without console errors; one point per finished trial; a click on a front point shows its pictures;
    a row appended to the run appears without a reload, zoom kept; traversal refused; a screenshot."""
    import threading
    import urllib.error
    import urllib.request

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from werkzeug.serving import make_server

    runs = _copy(tiny_run, tmp_path)
    server = make_server("127.0.0.1", 0, build_app(runs, interval_s=0.5).server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        browser.get(url)
        table = pd.read_csv(runs / "tiny" / "trials.csv", dtype={"trial_id": str})
        _wait(lambda: browser.execute_script(POINTS) == len(table), what="one point per finished trial")

        # a real click on the first front member, at its pixel
        member = browser.execute_script("""const gd = document.querySelector('#pareto .js-plotly-plot');
            const t = gd._fullData.find(t => /Pareto front/.test(t.name)); const L = gd._fullLayout;
            return [L.xaxis.d2p(t.x[0]) + L._size.l, L.yaxis.d2p(t.y[0]) + L._size.t, t.customdata[0][4]];""")
        plot = browser.find_element(By.CSS_SELECTOR, "#pareto .js-plotly-plot")
        ActionChains(browser).move_to_element_with_offset(plot, 0, 0).perform()  # the plot's centre
        size = plot.size
        ActionChains(browser).move_to_element_with_offset(plot, int(member[0] - size["width"] / 2),
                                                          int(member[1] - size["height"] / 2)).click().perform()
        images = _wait(lambda: [i for i in browser.find_elements(By.CSS_SELECTOR, "img.student")
                                if browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                          i)], what="the clicked member's pictures")
        assert len(images) == 4 and f"trials/{member[2]}/student_0.png" in images[0].get_attribute("src")
        assert browser.execute_script("return arguments[0].naturalWidth", images[0]) > 0

        # a box over the whole plot: the front members' pictures side by side
        drag = browser.find_element(By.CSS_SELECTOR, "#pareto .nsewdrag")
        w, h = drag.size["width"], drag.size["height"]
        ActionChains(browser).move_to_element_with_offset(drag, -w // 2 + 3, -h // 2 + 3).click_and_hold() \
            .move_by_offset(w - 6, h - 6).release().perform()
        grid = "return document.querySelectorAll('img.grid-student').length"
        shown = _wait(lambda: browser.execute_script(grid), what="the selected members' grid")
        assert shown == 4 * len(set(pd.read_csv(runs / "tiny" / "trials.csv", dtype={"trial_id": str})["trial_id"])
                                & {p.name for p in (runs / "tiny" / "probes" / "trials").iterdir()})

        # zoom, then a new trial lands in the run: it is drawn without a reload; zoom and selection stay
        axis = "return document.querySelector('#pareto .js-plotly-plot')._fullLayout.xaxis.range.slice()"
        before = browser.execute_script(axis)
        ActionChains(browser).move_to_element(plot).perform()  # the modebar shows on hover
        browser.find_element(By.CSS_SELECTOR, '#pareto .modebar-btn[data-title="Zoom in"]').click()
        zoom = _wait(lambda: (r := browser.execute_script(axis)) != before and r, what="the zoom")
        time.sleep(5)  # the zoom's relayout event reaches the server (a refresh before it would draw unzoomed)
        browser.execute_script("window.notReloaded = true;")
        row = table.iloc[0].to_dict()
        results = ResultsTable(runs / "tiny" / "trials.csv")
        results.add({**{k: (None if v != v else v) for k, v in results.rows[row["trial_id"]].items()},
                     "trial_id": "appended", "quality": float(row["quality"]) - 0.01})
        _wait(lambda: browser.execute_script(POINTS) == len(table) + 1, what="the appended trial's point")
        assert browser.execute_script("return window.notReloaded === true")
        kept = browser.execute_script(axis)
        assert kept == pytest.approx(zoom)
        assert browser.execute_script(grid) == shown
        assert browser.execute_script("return document.querySelector('#pareto .js-plotly-plot')"
                                      "._fullLayout.selections.length") == 1

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        for path in ("files/../../../etc/passwd", "files/%2e%2e/%2e%2e/etc/passwd"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + path)
            assert refused.value.code == 404
        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        with capsys.disabled():  # shown whatever pytest's capture
            print(f"\ndashboard screenshot: {shot}")
    finally:
        server.shutdown()
