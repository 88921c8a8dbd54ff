"""Helpers for the one-line error messages every stage raises (the message names the input and the cause)."""
from __future__ import annotations

import io
import warnings


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_midi_bytes(data: bytes, name: str, error: type[Exception]):
    """A `pretty_midi.PrettyMIDI` from raw bytes; unreadable bytes raise `error` naming `name`."""
    import pretty_midi

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as exc:  # mido raises OSError, EOFError, KeyError, ValueError ... on broken files
        raise error(f"{name}: not a readable MIDI file ({one_line(exc)})") from None
