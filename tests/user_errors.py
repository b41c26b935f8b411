"""The check every refusal test makes: a user error is one line, with no traceback in it."""

import pytest


def one_line(err: pytest.ExceptionInfo) -> str:
    """The error's message, after asserting it is one line and names no traceback."""
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text
