"""Dead letters: always encodable, always under the producer's request limit."""

from __future__ import annotations

from service.records import (
    DEAD_LETTER_HEADER_BYTES,
    DEAD_LETTER_KEY_BYTES,
    DEAD_LETTER_OVERHEAD_BYTES,
    Invalid,
    RawRecord,
    dead_letter,
    dead_letter_headers,
)


def _size(key: bytes | None, value: bytes, headers: tuple[tuple[str, bytes], ...]) -> int:
    return len(key or b"") + len(value) + sum(len(n.encode()) + len(v) for n, v in headers)


def test_a_detail_with_a_lone_surrogate_is_escaped_not_fatal() -> None:
    record = RawRecord("in\udcff", 0, 7, b"k", b"{}")
    headers = dict(dead_letter_headers(Invalid("bad_features", "'\ud800' is str", record)))
    assert headers["forecastd.error.detail"] == b"'\\ud800' is str"
    assert headers["forecastd.source.topic"] == b"in\\udcff"


def test_every_part_of_a_huge_record_is_capped() -> None:
    headers = tuple((f"h{i}", b"v" * 1000) for i in range(100))
    record = RawRecord("in", 0, 1, b"k" * 100_000, b"x" * 3_000_000, headers)
    letter = dead_letter(Invalid("oversized", "too big", record), max_value_bytes=1_048_576)
    assert len(letter.value) == 1_048_576
    assert len(letter.key or b"") == DEAD_LETTER_KEY_BYTES
    extra = dict(letter.headers)
    assert extra["forecastd.error.original_size"] == b"3000000"
    kept = [name for name, _ in letter.headers if name.startswith("h")]
    assert 0 < len(kept) < 100
    assert extra["forecastd.error.headers_dropped"] == str(100 - len(kept)).encode()
    assert sum(len(n) + len(v) for n, v in headers[: len(kept)]) <= DEAD_LETTER_HEADER_BYTES
    size = _size(letter.key, letter.value, letter.headers)
    assert size < 1_048_576 + DEAD_LETTER_OVERHEAD_BYTES


def test_a_record_that_fits_is_forwarded_byte_for_byte() -> None:
    record = RawRecord("in", 0, 1, b"k", b"not json", (("trace", b"1"),))
    letter = dead_letter(Invalid("not_json", "nope", record), max_value_bytes=1024)
    assert (letter.key, letter.value) == (b"k", b"not json")
    assert letter.headers[0] == ("trace", b"1")
    assert "forecastd.error.original_size" not in dict(letter.headers)
