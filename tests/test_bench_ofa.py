"""bench/ofa_sr4x.py: the README's once-for-all tables are its kept full run, and --report reads only its JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "bench" / "results" / "ofa_sr4x.json"
sys.path.insert(0, str(ROOT / "bench"))


def test_readme_tables_are_the_kept_run():
    from ofa_sr4x import FRACTIONS, tables_markdown

    data = json.loads(KEPT.read_text())
    # every family it measured at every budget, judged on the whole test photos
    families = list(dict.fromkeys(r["subnet"].split()[0] for r in data["rows"]))
    assert "resnet" in families and data["finetune_steps"] == 500
    assert [r["subnet"] for r in data["rows"]] == [f"{f} 1/{n}" for f in families for n in FRACTIONS]
    for row in data["rows"]:
        assert set(row["finetuned"]["per_image"]) == set(data["teacher"]["test"]["per_image"])
        assert row["macs"] <= data["teacher"]["macs"] / int(row["subnet"].split("/")[1])
    readme = (ROOT / "README.md").read_text()
    blocks = tables_markdown(data).strip().split("\n\n")  # the README puts its words between them
    assert len(blocks) == 6 and all(block in readme for block in blocks)


def test_report_of_something_else_is_one_line(tmp_path):
    (tmp_path / "x.json").write_text('{"rows": []}')
    done = subprocess.run([sys.executable, "bench/ofa_sr4x.py", "--report", str(tmp_path / "x.json")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: --report {tmp_path / 'x.json'}: not a JSON this benchmark wrote (rows, teacher or bicubic missing)"]
