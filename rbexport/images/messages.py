"""Small pieces of the one-line reasons the image modules give."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
    """A library's error message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def mm(value: float) -> str:
    """A length or coordinate with up to 4 decimals and no trailing zeros: 0.7, -120.25, 2."""
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def listed(values) -> str:
    """Numbers as (a, b, c)."""
    return "(" + ", ".join(mm(value) for value in values) + ")"
