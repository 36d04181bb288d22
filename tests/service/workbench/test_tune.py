"""``forecastd tune``: with a small budget and a fixed seed the config it writes is no
worse than the starting one on the held-back part, and ``forecastd check`` takes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.cli import main
from service.config import Settings, load_settings
from service.tools import replay
from service.workbench.tune import score, search_space, starting_values

START = """\
forecast: {horizon: 1, window: 32}
models:
  - {name: linear, kind: river.linear, primary: true}
  - {name: last, kind: persistence}
"""


def test_tuned_config_holds_up_on_held_back_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = tmp_path / "start.yaml"
    start.write_text(START)
    out = tmp_path / "tuned.yaml"
    argv = ["tune", "waterflow", "-c", str(start), "--trials", "6", "--seed", "3"]
    assert main([*argv, "--jobs", "1", "--holdout", "0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "starting config" in printed
    assert "best of" in printed
    assert main(["check", "-c", str(out)]) == 0
    capsys.readouterr()

    # Re-score both configs independently, on the same split the command used.
    tuned = load_settings(out, env={})
    starting = load_settings(start, env={})
    frame = replay.load_input("waterflow")
    records = replay.as_records(
        replay.encode(frame, replay.Columns(), starting.schema_), starting.kafka.input_topic
    )
    split = int(len(records) * 0.7)
    _, held_tuned = score(records, tuned, split)
    _, held_start = score(records, starting, split)
    # it found a config of its own (not the fallback), and that one holds up
    assert "starting config kept" not in out.read_text()
    assert tuned != starting
    assert held_tuned <= held_start
    header = out.read_text().splitlines()[1]
    assert f"tuned {score(records, tuned, split)[0]:.6g} / {held_tuned:.6g}" in header
    assert yaml.safe_load(out.read_text())["models"][0]["name"] == "linear"


def test_bad_holdout_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.yaml"
    assert main(["tune", "waterflow", "--trials", "1", "--holdout", "1.5", "--out", str(out)]) == 2
    assert "--holdout" in capsys.readouterr().err
    assert not out.exists()


def test_a_holt_member_has_its_smoothing_and_damping_searched_from_its_values() -> None:
    settings = Settings.model_validate(
        {
            "models": [
                {"name": "ensemble", "kind": "ensemble", "primary": True},
                {"name": "last", "kind": "persistence"},
                {"name": "trend", "kind": "holt", "params": {"damping": 0.9}},
            ]
        }
    )
    dims = {dim.path: dim for dim in search_space(settings)}
    paths = {("models", 2, "params", p) for p in ("alpha", "beta", "damping")}
    assert paths <= set(dims)
    start = starting_values(list(dims.values()), settings)
    assert start[dims[("models", 2, "params", "damping")].name] == 0.9


def test_a_tables_default_searches_its_regressions_penalty_and_memory() -> None:
    """``configs/table.yaml`` (the built-in default for tables): the tune searches the
    ``ridge`` member's penalty and memory beside the ensemble's settings, starting from
    the kind's defaults."""
    settings = load_settings(Path(__file__).resolve().parents[3] / "configs" / "table.yaml", {})
    index = [m.name for m in settings.models].index("regression")
    dims = {dim.path: dim for dim in search_space(settings)}
    assert {("models", index, "params", p) for p in ("ridge", "memory")} <= set(dims)
    start = starting_values(list(dims.values()), settings)
    assert start[dims[("models", index, "params", "ridge")].name] == 1.0
