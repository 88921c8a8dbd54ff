"""Helpers of the bad-input suite: every input is generated in tmp_path, and every outcome is either a result
or one error line of the project's own type that names the input."""
from __future__ import annotations

import pytest


def assert_one_line_error(excinfo: pytest.ExceptionInfo, name: str, types: tuple[type, ...]) -> str:
    """The raised error is one of `types`, its message is one line and names the input file `name`."""
    message = str(excinfo.value)
    assert isinstance(excinfo.value, types), f"{type(excinfo.value).__name__}: {message}"
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    assert name in message, f"{name!r} not named in {message!r}"
    assert "Traceback" not in message
    return message
