"""Feed history into a topic (or straight into the pipeline) as keyed JSON records.

Input is a CSV or Parquet file (read with pandas) or a bundled dataset
(:mod:`service.tools.datasets`). Columns are mapped onto the input format
(docs/messages.md) with the field names of ``schema``; time is sent as epoch
milliseconds. Records go out in file order (or in time order, :func:`in_time_order`:
the command line's ``--sort``), at ``rate`` records per second (0: as fast as the
broker takes them).
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from kafka import KafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service.config import SchemaSettings
from service.errors import DatasetError
from service.extras import require
from service.io.decode import EPOCH_UNITS, iso_text, ms_per_unit
from service.io.fields import put, top_level
from service.io.partitioner import positive_murmur2
from service.records import RawRecord
from service.tools import datasets


@dataclass(frozen=True, slots=True)
class Columns:
    """Which columns hold what; ``features=None`` means every other numeric column.
    ``key=None``: the file is one series, every row keyed ``series`` (the command line
    names it after the file); ``time=None``: no time field is sent (the broker's record
    time counts)."""

    key: str | None = "key"
    time: str | None = "ts"
    target: str = "y"
    features: tuple[str, ...] | None = None
    series: str = "series"


def read_frame(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            require("parquet", f"reading {path.name}")
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=_delimiter(path))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


_OTHER_DELIMITERS = ";\t|"
_COMPRESSED = {".gz", ".bz2", ".zip", ".xz", ".zst", ".tar"}


def _delimiter(path: Path) -> str:
    """A comma, unless the header line has none and holds one of ``;``, tab or ``|``
    instead (the one it holds most of): spreadsheets in many locales export with
    semicolons. Only a header without a comma is looked at again, so no file that
    reads as comma-separated reads otherwise. A compressed file (pandas reads it by
    its suffix) is comma-separated."""
    if path.suffix.lower() in _COMPRESSED:
        return ","
    with path.open("rb") as file:
        header = file.readline(1 << 16).decode("utf-8", errors="replace")
    if "," in header:
        return ","
    counts = {delimiter: header.count(delimiter) for delimiter in _OTHER_DELIMITERS}
    best = max(counts, key=lambda delimiter: counts[delimiter])
    return best if counts[best] else ","


def load_input(source: str) -> pd.DataFrame:
    """A bundled dataset name, else a CSV/Parquet path."""
    if source in datasets.DATASETS:
        return datasets.load(source)
    if not Path(source).exists():
        raise DatasetError(
            f"{source!r} is neither a file nor a bundled dataset ({', '.join(datasets.DATASETS)})"
        )
    return read_frame(source)


def encode(
    frame: pd.DataFrame, columns: Columns, schema: SchemaSettings
) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs in frame order, values as input JSON (docs/messages.md).

    A cell is sent as what it says, so that the daemon judges each row as it judges any
    record, and a bad row costs that row only (it is dead-lettered with its reason) and
    never the file: numbers, and numeric text, as numbers; other text as it is (a target
    ``"n/a"`` is ``bad_target``, a time the decoder cannot read is ``bad_time``, a
    feature that is not a number is ignored and counted); an empty target as null
    (``bad_target``); an empty time as an empty string (``bad_time``: left out, it
    would take the time the record is produced and put the key's later rows out of
    order); an empty key as no key (``missing_key``); an empty feature is left out."""
    named = (columns.key, columns.time, columns.target)
    missing = [c for c in named if c and c not in frame]
    if missing:
        raise DatasetError(
            f"columns not found: {missing}; the file has {list(frame.columns)} (name them"
            " with --key-col, --time-col and --target-col; --key-col '' reads the file as"
            " one series, --time-col '' sends no time)"
        )
    features = _feature_columns(frame, columns)
    taken = {top_level(f) for f in (schema.key_field, schema.time_field, schema.target_field)}
    if not schema.features_field and taken.intersection(features):
        raise DatasetError(
            f"feature columns {sorted(taken.intersection(features))} have the names of the"
            " key, time or target fields, and features go beside them in a flat record"
            " (schema.features_field: ''): rename them, or leave them out with --features"
        )
    keys = _keys(frame[columns.key]) if columns.key else [columns.series] * len(frame)
    targets = _cells(frame[columns.target])
    times = _times(frame[columns.time], schema) if columns.time else None
    feature_cells = {name: _cells(frame[name]) for name in features}
    pairs = []
    for index, key in enumerate(keys):
        value: dict[str, Any] = {} if key is None else put({}, schema.key_field, key)
        put(value, schema.target_field, targets[index])
        if times is not None:
            put(value, schema.time_field, times[index])
        if features:
            row = ((name, cells[index]) for name, cells in feature_cells.items())
            x = {name: cell for name, cell in row if cell is not None}
            if schema.features_field:
                put(value, schema.features_field, x)
            else:  # a flat record
                value.update(x)
        pairs.append((b"" if key is None else key.encode(), orjson.dumps(value)))
    return pairs


def older_rows(frame: pd.DataFrame, columns: Columns, time_format: str | None = None) -> int:
    """How many rows have a time older than an earlier row of their key: sent in file
    order, the daemon dead-letters each as ``out_of_order`` (unless
    ``forecast.out_of_order: accept``). 0 without a time column; a time that cannot be
    read counts for neither side (it is ``bad_time``). ``time_format``: the
    ``schema.time_format`` text times are in, tried before pandas' guess."""
    if not columns.time or columns.time not in frame:
        return 0
    ms = _epoch_series(frame[columns.time], time_format)
    keys = frame[columns.key].astype(str) if columns.key and columns.key in frame else None
    if keys is None:
        newest_before = ms.cummax().shift(1).ffill()
    else:
        running = ms.groupby(keys, sort=False).cummax()
        newest_before = running.groupby(keys, sort=False).shift(1)
        newest_before = newest_before.groupby(keys, sort=False).ffill()
    return int((ms < newest_before).sum())


def in_time_order(
    frame: pd.DataFrame, columns: Columns, time_format: str | None = None
) -> pd.DataFrame:
    """The rows sorted by their time, stably (rows of the same time keep their file
    order, as keys sharing a timestamp do in a stream), for a file written newest
    first or grouped by something else; rows whose time cannot be read go last (they
    are ``bad_time`` wherever they are sent). Unchanged without a time column.
    ``time_format``: as for :func:`older_rows`."""
    if not columns.time or columns.time not in frame:
        return frame
    ms = _epoch_series(frame[columns.time], time_format).fillna(np.inf).to_numpy()
    return frame.iloc[np.argsort(ms, kind="stable")].reset_index(drop=True)


def _epoch_series(series: pd.Series, time_format: str | None = None) -> pd.Series:
    """:func:`_epoch_ms` as floats (NaN: not a time), on the column's index."""
    return pd.Series(_epoch_ms(series, time_format), index=series.index, dtype="float64")


def _keys(series: pd.Series) -> list[str | None]:
    """A key column's cells as text (a whole number as ``7``, not the ``7.0`` a column
    of numbers with an empty cell reads as); None for an empty cell."""
    out: list[str | None] = []
    for cell in series.tolist():
        if _empty(cell):
            out.append(None)
        elif isinstance(cell, float) and cell.is_integer():
            out.append(str(int(cell)))
        else:
            out.append(str(cell))
    return out


def _cells(series: pd.Series) -> list[Any]:
    """A column's cells as numbers where they are numbers or numeric text, as the text
    where they are other text, None where empty (see :func:`encode`)."""
    if _numbers(series):
        return [None if math.isnan(v) else v for v in series.astype(float).tolist()]
    numbers = pd.to_numeric(series, errors="coerce").astype(float).tolist()
    return [
        None if _empty(cell) else cell if math.isnan(number) else number
        for cell, number in zip(series.tolist(), numbers, strict=True)
    ]


def _numbers(series: pd.Series) -> bool:
    """Whether a column is numbers (not booleans), to be read as they are."""
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _empty(cell: Any) -> bool:
    return cell is None or (not isinstance(cell, str) and bool(pd.isna(cell)))


def _times(series: pd.Series, schema: SchemaSettings) -> list[int | str]:
    """A time column's cells as :func:`_time_value` sends them; a cell that is not a
    time as its text, an empty one as ``""`` (see :func:`encode`). Cells in
    ``schema.time_format`` (``20240102`` as ``%Y%m%d``, a number or text alike) go as
    their text, and so does a column of text times under a ``schema.time_zone`` other
    than UTC, for the daemon to read by those rules: pandas would guess the format (a
    day-first date read month-first, a date of digits read as epoch seconds) and take
    a time without a zone as UTC."""
    texts = _texts(series)
    if _is_datetime(series):
        fitting = [False] * len(series)
    elif schema.time_format is not None:
        fitting = [_fits(text, schema.time_format) for text in texts]
    else:
        local = _is_text(series) and schema.time_zone != "UTC" and _epoch_text(series) is None
        fitting = [local] * len(series)
    cells = zip(texts, fitting, _epoch_ms(series), strict=True)
    return [_time_value(ms) if ms is not None and not fits else text for text, fits, ms in cells]


def _is_datetime(series: pd.Series) -> bool:
    return bool(pd.api.types.is_datetime64_any_dtype(series))


def _is_text(series: pd.Series) -> bool:
    return bool(pd.api.types.is_string_dtype(series) or pd.api.types.is_object_dtype(series))


def _texts(series: pd.Series) -> list[str]:
    """Each cell as text, as a producer would write it: a whole number without ``.0``
    (a column of numbers with a hole reads as floats), an empty cell as ``""``."""
    return [
        ""
        if _empty(cell)
        else str(int(cell))
        if isinstance(cell, float) and cell.is_integer()
        else str(cell)
        for cell in series.tolist()
    ]


def _fits(text: str, time_format: str) -> bool:
    """Whether ``text`` is a time in ``time_format``, as the decoder tries it."""
    try:
        datetime.strptime(text, time_format)  # noqa: DTZ007 - a check, the zone is the daemon's
    except ValueError:
        return False
    return True


def _feature_columns(frame: pd.DataFrame, columns: Columns) -> tuple[str, ...]:
    """The listed columns; else every numeric column but the key, time and target, and
    but a column without a name (pandas calls it ``Unnamed: N``): that is the row
    number a DataFrame saved with its index writes, a counter no forecast should learn
    from. Listed by name, it is sent like any other."""
    if columns.features is not None:
        unknown = [c for c in columns.features if c not in frame]
        if unknown:
            raise DatasetError(f"feature columns not found: {unknown}")
        return columns.features
    taken = {columns.key, columns.time, columns.target}
    return tuple(
        str(c)
        for c in frame.columns
        if c not in taken
        and not _UNNAMED.fullmatch(str(c))
        and pd.api.types.is_numeric_dtype(frame[c])
    )


_UNNAMED = re.compile(r"Unnamed: \d+")


def _time_value(ms: int) -> int | str:
    """Epoch milliseconds, or an ISO-8601 string for times within about three years of
    1970, whose milliseconds the decoder would read as seconds
    (:data:`~service.io.decode.EPOCH_UNITS`). No time read from a column is past year
    5138, where milliseconds would read as microseconds."""
    return ms if abs(ms) >= EPOCH_UNITS[0] else iso_text(ms)


def _epoch_ms(series: pd.Series, time_format: str | None = None) -> list[int | None]:
    """A time column as epoch milliseconds, None for a cell that is not a time; a
    numeric one in the unit its largest magnitude says, as the decoder reads a single
    time; so is text of which at least half the cells are numbers (a column of epoch
    numbers with a bad cell, which pandas reads as text: as dates, every cell would be
    lost). Other text is read in one format for the column when it has one, else cell
    by cell (``format="mixed"``: slower, for columns whose cells differ in format);
    with ``time_format``, in that format first (as the decoder reads it), then so."""
    if time_format is not None and not _is_datetime(series):
        texts = pd.Series(_texts(series), index=series.index)
        given = pd.to_datetime(texts, utc=True, errors="coerce", format=time_format)
        # the column as a whole, for the cells the format misses (none: not needed)
        general = _epoch_ms(series) if bool(given.isna().any()) else []
        return [
            general[i] if pd.isna(stamp) else int(stamp.value // 1_000_000)
            for i, stamp in enumerate(given)
        ]
    if _numbers(series):
        return _epoch_ms_of_numbers(series.astype(float))
    numbers = _epoch_text(series)
    if numbers is not None:
        return _epoch_ms_of_numbers(numbers)
    with warnings.catch_warnings():  # "could not infer format": the fallback says it all
        warnings.simplefilter("ignore", UserWarning)
        try:
            stamps = pd.to_datetime(series, utc=True)
        except (ValueError, TypeError, OverflowError):
            stamps = pd.to_datetime(series, utc=True, errors="coerce", format="mixed")
    return [None if pd.isna(t) else int(t.value // 1_000_000) for t in stamps]


def _epoch_text(series: pd.Series) -> pd.Series | None:
    """A text column at least half of whose cells are numbers, as floats (NaN: the
    others): epoch numbers with a few bad cells; None for any other column."""
    if not _is_text(series):
        return None
    numbers = pd.to_numeric(series, errors="coerce")
    cells = int(series.map(lambda cell: not _empty(cell) and str(cell).strip() != "").sum())
    if numbers.notna().sum() * 2 >= cells > 0:
        return numbers.astype(float)
    return None


def _epoch_ms_of_numbers(values: pd.Series) -> list[int | None]:
    """Epoch numbers (NaN: not a time) as milliseconds, in the unit the largest says."""
    largest = values.abs().max()
    scale = ms_per_unit(largest) if math.isfinite(largest) else 1.0
    return [int(v * scale) if math.isfinite(v * scale) else None for v in values.tolist()]


def as_records(
    pairs: Sequence[tuple[bytes, bytes]], topic: str, partitions: int = 1
) -> list[RawRecord]:
    """In-memory records for an offline run, each key in the partition Kafka's default
    partitioner gives it (:func:`~service.io.partitioner.positive_murmur2`), as a
    keyed produce to a topic of ``partitions`` would place it: an offline run then
    splits keys between partition tasks as the daemon on that topic does."""
    offsets = [0] * partitions
    records = []
    for key, value in pairs:
        partition = positive_murmur2(key) % partitions if partitions > 1 else 0
        records.append(RawRecord(topic, partition, offsets[partition], key, value))
        offsets[partition] += 1
    return records


def paced(count: int, rate: float) -> Iterator[int]:
    """Yield 0..count-1, sleeping so that item i leaves at ``i / rate`` seconds."""
    start = time.monotonic()
    for index in range(count):
        if rate > 0:
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield index


def to_kafka(
    pairs: Sequence[tuple[bytes, bytes]],
    topic: str,
    bootstrap: str,
    rate: float = 0.0,
    show_progress: bool = True,
    security: dict[str, Any] | None = None,
    should_stop: Any = None,
    connect_timeout_s: float = 30.0,
) -> int:
    """Produce ``pairs`` to ``topic``; returns how many were acknowledged. No broker
    within ``connect_timeout_s``: kafka-python's ``KafkaTimeoutError``."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        acks="all",
        linger_ms=5,
        bootstrap_timeout_ms=int(connect_timeout_s * 1000),
        **(security or {}),
    )
    progress = Progress(
        TextColumn("replay → [bold]{task.fields[topic]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not show_progress,
    )
    sent = 0
    try:
        with progress:
            task = progress.add_task("replay", total=len(pairs), topic=topic)
            for index in paced(len(pairs), rate):
                if should_stop is not None and should_stop():
                    break
                key, value = pairs[index]
                producer.send(topic, key=key, value=value)
                sent += 1
                if index % 100 == 0:
                    progress.update(task, completed=sent)
            producer.flush()
            progress.update(task, completed=sent)
    finally:
        producer.close(timeout=10)
    return sent
