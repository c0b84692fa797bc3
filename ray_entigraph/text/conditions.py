"""Conditions over a record's columns, written in config as `column op value` (`input.where`): pure parsing
and evaluation, no I/O.

    language == en          score >= 3.5          source in ["web", "books"]          url != null

`op` is one of == != >= <= > < in, `not in`; `value` is read as JSON where it parses (numbers, quoted strings,
lists, true/false/null) and as a bare string otherwise. A condition on a column the record lacks is an error
the caller reports, never a silent miss.
"""

from __future__ import annotations

import functools
import json
import operator
import re
from dataclasses import dataclass
from typing import Any

_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt,
        "<": operator.lt, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b}
_PATTERN = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(==|!=|>=|<=|>|<|not\s+in\b|in\b)\s*(.+?)\s*$")


class MissingColumn(KeyError):
    """The record has no such column."""


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: Any
    text: str  # as written, for messages

    def holds(self, record: dict) -> bool:
        """Whether the record satisfies the condition; MissingColumn if it lacks the column. A comparison
        between incomparable types (a number against a string) does not hold."""
        if self.column not in record:
            raise MissingColumn(self.column)
        try:
            return bool(_OPS[self.op](record[self.column], self.value))
        except TypeError:
            return False


def parse_condition(text: str) -> Condition:
    """`column op value` -> Condition; ValueError with what is wrong and an example."""
    m = _PATTERN.match(text)
    if not m:
        raise ValueError(f"{text!r} is not `column op value`. Fix: use an op among ==, !=, >=, <=, >, <, in, "
                         "not in, e.g. 'language == en' or 'score >= 3'")
    column, op, raw = m.group(1), " ".join(m.group(2).split()), m.group(3)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        if raw[0] in "<>=!":  # `score >> 1`, `a == = b`: a mistyped operator, not a word
            raise ValueError(f"{text!r}: {raw!r} is not a value. Fix: one operator, then a number, a word or "
                             "JSON, e.g. 'score >= 3'") from None
        value = raw
    if op in ("in", "not in") and not isinstance(value, (list, str)):
        raise ValueError(f"{text!r}: `{op}` needs a list. Fix: e.g. '{column} {op} [\"a\", \"b\"]'")
    return Condition(column, op, value, text)


@functools.lru_cache(maxsize=256)
def parse_conditions(texts: tuple[str, ...]) -> tuple[Condition, ...]:
    """Each condition parsed once per process (rules are checked per record and per document)."""
    return tuple(parse_condition(text) for text in texts)


def first_failing(conditions: tuple[Condition, ...], record: dict) -> Condition | None:
    """The first condition the record does not satisfy, or None when it satisfies all (MissingColumn
    propagates)."""
    for c in conditions:
        if not c.holds(record):
            return c
    return None
