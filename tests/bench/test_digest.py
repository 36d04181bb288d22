"""bench/digest.py: the same forecasts give the same digest, whenever they were made,
and a forecast that moved by one bit gives another."""

from __future__ import annotations

import orjson
import pytest

from bench.digest import digest, main


def prediction(y_hat: float, produced_at: int) -> bytes:
    return orjson.dumps({"key": "k", "y_hat": y_hat, "model": "m", "produced_at": produced_at})


def test_the_wall_clock_is_left_out_and_every_bit_of_a_value_counts() -> None:
    first = digest([prediction(1.5, 100), prediction(2.0, 101)])
    later = digest([prediction(1.5, 900), prediction(2.0, 950)])
    moved = digest([prediction(1.5, 100), prediction(float.fromhex("0x1.0000000000001p+1"), 101)])
    assert first == later
    assert first[0] == moved[0] == 2
    assert moved[1] != first[1]


def test_two_runs_print_the_same_digest_and_another_stream_another(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = ["--records", "400", "--keys", "4", "--partitions", "2"]
    main(stream)
    main(stream)
    main(["--records", "400", "--keys", "5", "--partitions", "2"])
    first, second, other = capsys.readouterr().out.splitlines()
    assert first == second
    assert first.startswith(f"{400 * 9} predictions")  # 9 models, one each per record
    assert other.startswith(f"{400 * 9} predictions")
    assert other != first
