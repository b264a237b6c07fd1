"""CSV cells a spreadsheet will not run. A text cell that begins with =, +, -, @, a tab or a
carriage return is a formula to Excel and LibreOffice (CSV injection); a class folder or a
file may be named so. Such a cell is written with a leading apostrophe, the standard guard
(OWASP), and a cell that begins with an apostrophe gets one more, so that reading strips
exactly one and gets every name back as it was. Numbers are never touched (-0.5 stays a
number)."""

from __future__ import annotations

from typing import Any

TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")


def cell(value: Any) -> Any:
    """A value as it is written: text that a spreadsheet would run, guarded."""
    if isinstance(value, str) and value.startswith(TRIGGERS):
        return "'" + value
    return value


def uncell(value: Any) -> Any:
    """A value as it was before ``cell``."""
    if isinstance(value, str) and value.startswith("'"):
        return value[1:]
    return value


def _text_columns(table) -> list:
    from pandas.api.types import is_object_dtype, is_string_dtype

    return [
        c
        for c in table.columns
        if is_object_dtype(table[c].dtype) or is_string_dtype(table[c].dtype)
    ]


def guarded(table):
    """A pandas table with every text cell guarded (for ``to_csv``)."""
    out = table.copy()
    for column in _text_columns(out):
        out[column] = out[column].map(cell)
    return out


def unguarded(table):
    """A table read back from a guarded CSV: its text cells as they were."""
    for column in _text_columns(table):
        table[column] = table[column].map(uncell)
    return table
