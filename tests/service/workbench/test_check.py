"""``forecastd check``: the resolved config, secrets masked, or one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.cli import main
from service.config import MASK

ROOT = Path(__file__).resolve().parents[3]


def test_prints_the_resolved_config_with_defaults_and_overrides(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "kafka:\n  security: {security_protocol: SASL_SSL, sasl_mechanism: PLAIN,"
        " sasl_plain_username: svc, sasl_plain_password: hunter2-from-file}\n"
        "models:\n  - {name: a, kind: river.linear, primary: true}\n"
    )
    monkeypatch.setenv("FORECASTD_KAFKA__BOOTSTRAP_SERVERS", "broker-7:9092")
    monkeypatch.setenv("FORECASTD_KAFKA__SECURITY__SASL_PLAIN_PASSWORD", "s3cret-from-env")
    assert main(["check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "s3cret" not in out
    assert "kafka.bootstrap_servers" in out.splitlines()[1]  # overrides named, not shown
    resolved = yaml.safe_load(out)
    assert resolved["kafka"]["bootstrap_servers"] == "broker-7:9092"
    assert resolved["kafka"]["security"]["sasl_plain_password"] == MASK
    assert resolved["kafka"]["security"]["sasl_plain_username"] == MASK
    assert resolved["forecast"]["window"] == 32  # a default, filled in
    assert resolved["models"][0]["publish"] is False  # a model default, filled in
    assert resolved["models"][0]["name"] == "a"


@pytest.mark.parametrize("name", ["demo.yaml", "stocks.yaml", "sensors.yaml", "table.yaml"])
def test_accepts_the_shipped_configs(capsys: pytest.CaptureFixture[str], name: str) -> None:
    assert main(["check", "-c", str(ROOT / "configs" / name)]) == 0
    assert "valid" in capsys.readouterr().out.splitlines()[0]


def test_a_bad_config_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("kafka: {security: {sasl_plain_password: hunter2}}\nforecast: {window: 1}\n")
    assert main(["check", "-c", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "forecast.window" in lines[0]
    assert "hunter2" not in captured.err


def test_missing_workbench_extra_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_matplotlib(name: str, *args: object) -> object:
        return None if name == "matplotlib" else real(name)

    monkeypatch.setattr(importlib.util, "find_spec", without_matplotlib)
    assert main(["backtest", "waterflow", "--report", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "'workbench' extra" in err[0]
    assert "forecastd[workbench]" in err[0]


def test_a_record_is_read_as_the_daemon_would(capsys: pytest.CaptureFixture[str]) -> None:
    """``--record``: key, time, target and features (discovered from the record under
    ``auto``), and what is ignored; exit 0."""
    record = (
        '{"key": "AAPL", "ts": 1700000000000, "y": 189.1, "x": {"volume": 1200, "side": "buy"}}'
    )
    assert main(["check", "--record", record]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "# record: read",
        "key       'AAPL'",
        "time      2023-11-14T22:13:20.000Z (1700000000000 ms)",
        "target    189.1",
        "features  volume 1200.0 (discovered: auto)",
        "ignored   side",
    ]


def test_a_record_the_daemon_refuses_exits_1_with_its_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    record = '{"key": "BTC-USD", "ts": 1700000000000, "y": "43210.55"}'
    assert main(["check", "--record", record]) == 1
    assert capsys.readouterr().out == (
        "# record: dead-lettered as bad_target: 'y' is str, expected a number\n"
    )
    config = tmp_path / "feed.yaml"
    config.write_text("schema:\n  numeric_text: true\n  key_field: /meta/id\n  key_source: field\n")
    nested = '{"meta": {"id": "BTC-USD"}, "ts": 1700000000000, "y": "43210.55"}'
    assert main(["check", "-c", str(config), "--record", nested, "--record-key", "b1"]) == 0
    out = capsys.readouterr().out
    assert "key       'BTC-USD'\n" in out
    assert "target    43210.55\n" in out


def test_records_from_a_file_are_summarised_with_every_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--records``: one value a line, as ``kafka-console-consumer`` prints them."""
    lines = [
        f'{{"key": "k{i % 3}", "ts": {1_700_000_000_000 + i * 1000}, "y": {i}, "x": {{"v": {i}}}}}'
        for i in range(20)
    ]
    lines[4] = '{"key": "a", "y": "n/a"}'
    lines[9] = "not json"
    lines[12] = '{"key": "k0", "ts": 1600000000000, "y": 1}'  # older than k0's newest
    path = tmp_path / "sample.ndjson"
    path.write_text("\n".join(lines) + "\n\n")
    assert main(["check", "--records", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# records: 18 read, 2 dead-lettered"
    assert "keys       3" in out
    assert "late       1, older than an earlier record of their key: out_of_order" in out
    assert "features   v (discovered: auto, from the first 20)" in out
    assert "  bad_target  1  e.g. 'y' is str, expected a number (line 5)" in out
    assert "  not_json    1  e.g. not UTF-8 JSON (JSONDecodeError) (line 10)" in out
    clean = tmp_path / "clean.ndjson"
    clean.write_text("\n".join(lines[:4]) + "\n")
    assert main(["check", "--records", str(clean)]) == 0
    assert capsys.readouterr().out.startswith("# records: 4 read, 0 dead-lettered\n")


def test_a_record_that_is_not_utf8_is_judged_not_a_crash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bytes.ndjson"
    path.write_bytes(b'{"key": "a", "ts": 1, "y": 1}\n{"key": "b\xff", "ts": 1, "y": 1}\n')
    assert main(["check", "--records", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("# records: 1 read, 1 dead-lettered\n")
    assert "  not_json  1  e.g. not UTF-8 JSON (UnicodeDecodeError) (line 2)" in out


def test_one_kind_of_check_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--broker", "--records", "-"]) == 2
    assert "--records and --broker: give one of them" in capsys.readouterr().err
