"""Offline replays of data without a time column: records carry the time they are
read at (as a broker stamps records), so nothing is dead-lettered for want of a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main


def test_backtest_without_a_time_column_scores_every_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "no-time.csv"
    data.write_text("key,y\n" + "".join(f"k{i % 3},{(i * 7) % 11}\n" for i in range(300)))
    config = tmp_path / "c.yaml"
    config.write_text("models:\n  - {name: last, kind: persistence, primary: true}\n")
    out = tmp_path / "report"
    argv = ["backtest", str(data), "-c", str(config), "--time-col", "", "--warmup", "0"]
    assert main([*argv, "--report", str(out), "--quiet"]) == 0
    assert "300 records, 0 dead-lettered" in capsys.readouterr().out
    document = json.loads((out / "metrics.json").read_text())
    assert document["dead_letters"] == 0
    assert document["models"]["last"]["overall"]["n"] == 297  # 3 keys x 99 resolved


def test_a_report_counts_its_dead_letters_by_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "late.csv"
    rows = [f"a,2024-01-{day:02d},{day % 4}" for day in (1, 2, 3, 2, 4, 5)]
    data.write_text("key,ts,y\n" + "\n".join([*rows, "a,2024-01-06,n/a"]) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text("models:\n  - {name: last, kind: persistence, primary: true}\n")
    out = tmp_path / "report"
    assert main(["backtest", str(data), "-c", str(config), "--report", str(out), "--quiet"]) == 0
    assert "7 records, 2 dead-lettered (bad_target 1, out_of_order 1)" in capsys.readouterr().out
    document = json.loads((out / "metrics.json").read_text())
    assert document["dead_letter_reasons"] == {"bad_target": 1, "out_of_order": 1}
    assert "2 dead-lettered (bad_target 1, out_of_order 1)" in (out / "index.html").read_text()
