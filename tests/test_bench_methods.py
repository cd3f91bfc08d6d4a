"""bench/methods.py: its quick run end to end (slow), and the README's table against the kept JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "bench" / "results" / "methods.json"
sys.path.insert(0, str(ROOT / "bench"))


def test_readme_table_is_the_kept_runs():
    from methods import table_markdown

    assert table_markdown(json.loads(KEPT.read_text())) in (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_quick_run_measures_every_method(tmp_path):
    done = subprocess.run([sys.executable, "bench/methods.py", "--quick", "--out", str(tmp_path / "out"), "--json",
                           str(tmp_path / "methods.json")], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "methods.json").read_text())
    cells = {c["method"]: c for c in data["cells"]}
    assert set(cells) == {"ofa", "kd", "prune", "dmask", "agd"} and data["steps"] == 4
    for method, cell in cells.items():
        assert "error" not in cell, cell
        assert cell["macs_torchprofile"] <= cell["budget"] and cell["fraction"] == 10
        assert set(cell["test"]["per_image"]) == set(data["teacher"]["test"]["per_image"])  # the whole test photos
        assert cell["latency_ms"] > 0 and cell["scratch"]["psnr"] > 20 and cell["search_cpu_s"] is not None
    assert cells["ofa"]["search_cpu_s"] > 0 and cells["ofa"]["trials"] == 4
    assert "| agd | 1/10 | agd |" in done.stdout and (tmp_path / "methods.png").stat().st_size > 10_000
    # an interrupted run continues: nothing is measured again
    again = subprocess.run([sys.executable, "bench/methods.py", "--quick", "--resume", "--out", str(tmp_path / "out")],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and "[1/5]" not in again.stdout
