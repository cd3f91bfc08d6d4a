"""The results table and the Pareto front: data checked without drawing."""

import pandas as pd

from nas.pareto import pareto_front, render_html
from nas.results import COLUMNS, ResultsTable


def row(trial_id, macs, quality, status="ok", **extra):
    return {"trial_id": trial_id, "config": f"c{trial_id}", "macs_torchprofile": macs, "macs_fvcore": macs // 2,
            "params": 10, "quality": quality, "latency_ms": 1.0, "feasible": True, "status": status, **extra}


def test_table_round_trips_and_keeps_one_row_per_trial(tmp_path):
    table = ResultsTable(tmp_path / "trials.csv")
    table.add(row("a", 100, 20.0))
    table.add(row("b", 200, None, status="error", error="boom"))
    table.add(row("a", 100, 21.0))  # a retried trial replaces its row
    again = ResultsTable(tmp_path / "trials.csv")
    assert len(again) == 2 and list(pd.read_csv(tmp_path / "trials.csv").columns) == COLUMNS
    assert again.rows["a"]["quality"] == 21.0 and again.rows["a"]["feasible"] is True
    assert again.rows["b"]["error"] == "boom" and again.rows["b"]["quality"] is None
    assert not list(tmp_path.glob(".trials.csv.*"))


def test_pareto_front_handles_dominance_and_ties():
    frame = pd.DataFrame([row("a", 100, 20.0), row("b", 200, 19.0), row("c", 200, 22.0), row("d", 300, 22.0),
                          row("e", 100, 20.0), row("f", 400, 25.0), row("g", 50, None, status="error")])
    front = pareto_front(frame)
    assert list(front.front_rows["trial_id"]) == ["a", "c", "f"]  # b and d dominated, e ties a (first kept)
    assert len(front.candidates) == 6


def test_render_html_draws_the_record(tmp_path):
    frame = pd.DataFrame([row("a", 100e6, 20.0, share=0.41), row("b", 300e6, 22.0, share=None)])
    render_html(pareto_front(frame, budget=250e6, teacher_macs=5e9, teacher_quality=23.0), tmp_path / "p.html",
                title="t", quality_label="val PSNR")
    html = (tmp_path / "p.html").read_text()
    assert "Pareto front" in html and "budget 0.25G" in html and "teacher" in html and "ca" in html
    assert "share of the teacher's gain" in html and "41%" in html and "n/a" in html


def test_rows_survive_a_killed_driver_through_the_journal(tmp_path):
    table = ResultsTable(tmp_path / "trials.csv", min_batch=100)  # as between two batched CSV writes
    for i in range(5):
        table.add(row(f"t{i}", 100 + i, 20.0 + i))
    assert len(pd.read_csv(tmp_path / "trials.csv")) == 1  # the CSV has the first batch only
    with open(tmp_path / "trials.journal", "a") as f:
        f.write('{"trial_id": "cut sh')  # a line the kill cut short
    again = ResultsTable(tmp_path / "trials.csv")
    assert sorted(again.rows) == [f"t{i}" for i in range(5)] and again.rows["t4"]["quality"] == 24.0
    again.save()
    assert len(pd.read_csv(tmp_path / "trials.csv")) == 5 and not (tmp_path / "trials.journal").exists()


def test_read_frame_is_the_tables_frame(tmp_path):
    """The readers' fast path gives the rows ResultsTable gives: the CSV's, then the journal's replayed over them
    (a replaced row keeps its new values, a line cut short is skipped, empty text stays empty)."""
    table = ResultsTable(tmp_path / "trials.csv", min_batch=3)
    for i in range(4):  # three rows reach the CSV, the fourth is in the journal only
        table.add({"trial_id": f"t{i}", "quality": float(i), "feasible": i % 2 == 0, "status": "ok", "config": f"c{i}"})
    table.add({"trial_id": "t1", "quality": 9.0, "feasible": True, "status": "ok", "config": "c1"})
    with open(tmp_path / "trials.journal", "a") as f:
        f.write('{"trial_id": "t9", "qual')
    fast = ResultsTable.read_frame(tmp_path / "trials.csv").set_index("trial_id")
    slow = ResultsTable(tmp_path / "trials.csv").frame().set_index("trial_id")
    assert sorted(fast.index) == sorted(slow.index) == ["t0", "t1", "t2", "t3"]
    for column in ("quality", "feasible", "status", "config"):
        assert fast.loc[slow.index, column].tolist() == slow[column].tolist()
    assert fast.loc["t1", "quality"] == 9.0 and bool(fast.loc["t1", "feasible"])
    assert fast["error"].isna().all() and slow["error"].isna().all()
