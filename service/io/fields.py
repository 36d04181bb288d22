"""Where a configured field is in a record: a name at its top level, or a JSON Pointer.

A ``schema.*_field`` that starts with ``/`` is a JSON Pointer (RFC 6901) into the
record, for payloads that nest what forecastd reads: ``/payload/after/price`` reads
``{"payload": {"after": {"price": 1.5}}}`` (a change-data-capture envelope), ``/0``
the first item of an array; ``~1`` stands for ``/`` and ``~0`` for ``~`` inside a
name. Any other field is a plain name, dots and all: ``temp.c`` is the field named
``temp.c``. Decoding reads fields with :func:`get`; the tools that write input
records (replay, the warm-up) write them with :func:`put`, so a nested schema gets
nested records.

>>> record = {"payload": {"after": {"price": 1.5, "a/b": 2}}, "tags": [7]}
>>> get(record, "/payload/after/price"), get(record, "/payload/after/a~1b"), get(record, "/tags/0")
(1.5, 2, 7)
>>> get(record, "/payload/before/price") is ABSENT, get(record, "payload") is ABSENT
(True, False)
>>> put({}, "/payload/after/price", 3.0)
{'payload': {'after': {'price': 3.0}}}
"""

from __future__ import annotations

import re
from typing import Any, Final


class _Absent:
    """What :func:`get` returns for a field the record does not have (not ``None``,
    which is JSON's ``null``: a field that is there, with no value)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()
_INDEX = re.compile(r"0|[1-9][0-9]{0,17}")  # an array index, no leading zeros (RFC 6901)


def is_pointer(field: str) -> bool:
    """Whether ``field`` is a JSON Pointer rather than a plain name."""
    return field.startswith("/")


def tokens(pointer: str) -> list[str]:
    """The reference tokens of a JSON Pointer, unescaped (RFC 6901, section 4)."""
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def get(record: dict[str, Any], field: str) -> Any:
    """The value of ``field`` in ``record``, or :data:`ABSENT`."""
    if field[:1] != "/":  # is_pointer, inline: every record reads three fields
        return record.get(field, ABSENT)
    value: Any = record
    for token in tokens(field):
        if isinstance(value, dict):
            value = value.get(token, ABSENT)
        elif isinstance(value, list) and _INDEX.fullmatch(token):
            index = int(token)
            value = value[index] if index < len(value) else ABSENT
        else:
            return ABSENT
        if value is ABSENT:
            return ABSENT
    return value


def put(record: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """``record`` with ``value`` at ``field``, creating the objects a pointer passes
    through; returns ``record``."""
    if not is_pointer(field):
        record[field] = value
        return record
    *path, last = tokens(field)
    here = record
    for token in path:
        here = here.setdefault(token, {})
    here[last] = value
    return record


def top_level(field: str) -> str:
    """The top-level name ``field`` lives under (a flat record's features leave the
    key, time and target fields out, nested or not)."""
    return tokens(field)[0] if is_pointer(field) else field
