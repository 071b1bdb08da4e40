"""One error type for bad input: the CLIs print its message as one line and exit 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (file, parameter, range). Message is one line, meant for the operator."""
