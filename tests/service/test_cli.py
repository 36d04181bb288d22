"""The command line: backtest end to end offline, and clear errors for bad input."""

from __future__ import annotations

import _thread
import signal
import threading
from pathlib import Path

import pytest

from service.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_backtest_prints_a_score_per_model(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "configs" / "demo.yaml")
    assert main(["backtest", "chick-weights", "-c", config, "--features", "diet"]) == 0
    out = capsys.readouterr().out
    for model in ("ensemble*", "mlp", "linear", "ewma", "last"):
        assert model in out
    assert "578 records, 0 dead-lettered" in out


def test_unknown_dataset_exits_2_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", "no-such-data"]) == 2
    err = capsys.readouterr().err
    assert "neither a file nor a bundled dataset" in err
    assert "sp500" in err


def test_missing_column_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("symbol,price\nA,1\n")
    assert main(["backtest", str(data)]) == 2
    assert "columns not found" in capsys.readouterr().err


def test_backtest_of_a_one_series_file_with_a_bad_row(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--key-col ''``: the file is one series; a row whose value is not a number is
    dead-lettered and the rest are scored."""
    data = tmp_path / "load.csv"
    rows = [f"2024-01-{day:02d},{10 + day % 3}" for day in range(1, 29)]
    rows[5] = "2024-01-06,n/a"
    data.write_text("ts,y\n" + "\n".join(rows) + "\n")
    assert main(["backtest", str(data), "--key-col", "", "--quiet"]) == 0
    assert "28 records, 1 dead-lettered" in capsys.readouterr().out


def test_backtest_of_a_newest_first_file_says_why_and_sort_fixes_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file written newest first: every row but the first is older than its key's
    newest, so the daemon's rules dead-letter them; the command says so before the
    run and counts the reason after it, and ``--sort`` scores the file as the same
    rows in time order would be."""
    rows = [f"k{day % 2},2024-01-{day:02d},{10 + day % 5 + day // 7}" for day in range(1, 29)]
    forward, backward = tmp_path / "forward.csv", tmp_path / "backward.csv"
    forward.write_text("key,ts,y\n" + "\n".join(rows) + "\n")
    backward.write_text("key,ts,y\n" + "\n".join(reversed(rows)) + "\n")
    assert main(["backtest", str(backward), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "26 of 28 rows are older than an earlier row of their key" in err
    assert "--sort" in err
    assert "28 records, 26 dead-lettered (out_of_order 26)" in out
    assert main(["backtest", str(backward), "--quiet", "--sort"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "28 records, 0 dead-lettered" in out
    assert main(["backtest", str(forward), "--quiet"]) == 0
    expected = capsys.readouterr().out
    table = [line for line in out.splitlines() if "│" in line]
    assert table == [line for line in expected.splitlines() if "│" in line]
    assert len(table) >= 7  # a row per model


def test_a_semicolon_separated_file_is_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = tmp_path / "export.csv"
    rows = [f"a;2024-01-{day:02d};{day % 4}" for day in range(1, 15)]
    data.write_text("key;ts;y\n" + "\n".join(rows) + "\n")
    assert main(["backtest", str(data), "--quiet"]) == 0
    assert "14 records, 0 dead-lettered" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["state", "ls"], ["replay", "chick-weights", "--quiet"]])
def test_a_tool_without_a_broker_exits_1_with_one_line(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real port nobody listens on, the wait cut to ``kafka.connect_timeout_s``."""
    monkeypatch.setenv("FORECASTD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("FORECASTD_KAFKA__CONNECT_TIMEOUT_S", "1")
    assert main(command) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("forecastd: broker error: KafkaTimeoutError: Unable to bootstrap")


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["backtest", "chick-weights", "--warmup", "-1"], "argument --warmup: must be 0 or more"),
        (["backtest", "chick-weights", "--warmup", "1.5"], "a whole number of scores"),
        (["replay", "chick-weights", "--rate", "-5"], "argument --rate: must be 0 or more"),
        (["demo", "--duration", "0"], "argument --duration: must be more than 0"),
        (["tune", "chick-weights", "--out", "o.yaml", "--jobs", "-1"], "argument --jobs"),
    ],
)
def test_a_bad_argument_exits_2_before_anything_runs(
    command: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(command)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("command", [["backtest", "--report"], ["tune", "--trials", "1", "--out"]])
def test_an_output_place_that_cannot_be_written_fails_before_the_run(
    command: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Not after minutes of backtesting or tuning: a file stands where the directory
    would go."""
    blocker = tmp_path / "taken"
    blocker.write_text("")
    place = blocker / "out" / ("o.yaml" if command[0] == "tune" else "")
    assert main([command[0], "chick-weights", *command[1:], str(place)]) == 2
    assert f"cannot create {blocker / 'out'}" in capsys.readouterr().err


def test_ctrl_c_in_a_tool_is_one_line_and_exit_130(capsys: pytest.CaptureFixture[str]) -> None:
    """SIGINT while a backtest runs (``interrupt_main`` delivers it as the terminal
    would: Python's handler raises KeyboardInterrupt wherever the main thread is).
    Python's own handler is set for the test: with another one left in place (by
    whatever ran before in this process) the interrupt would never reach the tool."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        assert main(["backtest", "traffic-volume", "--quiet"]) == 130
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip().splitlines()[-1] == "forecastd: interrupted"


def test_a_day_first_file_is_read_in_its_own_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``02/01/2024`` is 2 January here: pandas' guess reads such dates month first
    where it can, and puts the rows out of order; ``schema.time_format`` sends them
    as text for the daemon to read in that format."""
    data = tmp_path / "readings.csv"
    rows = [f"a,{day:02d}/01/2024 10:00,{day % 5}" for day in range(1, 29)]
    data.write_text("key,ts,y\n" + "\n".join(rows) + "\n")
    assert main(["backtest", str(data), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "out_of_order" in out
    assert "older than an earlier row" in err
    config = tmp_path / "local.yaml"
    config.write_text('schema:\n  time_format: "%d/%m/%Y %H:%M"\n  time_zone: Europe/Paris\n')
    assert main(["backtest", str(data), "-c", str(config), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "28 records, 0 dead-lettered" in out
    assert err == ""
