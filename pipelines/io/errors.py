"""Helpers for the one-line error messages every stage raises (the message names the input and the cause)."""
from __future__ import annotations

import io
import warnings


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_midi_bytes(data: bytes, name: str, error: type[Exception]):
    """A `pretty_midi.PrettyMIDI` from raw bytes (hanging notes closed, see `close_hanging_notes`);
    unreadable bytes raise `error` naming `name`."""
    import pretty_midi

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
        close_hanging_notes(pm, data)
        return pm
    except Exception as exc:  # mido raises OSError, EOFError, KeyError, ValueError ... on broken files
        raise error(f"{name}: not a readable MIDI file ({one_line(exc)})") from None


def close_hanging_notes(pm, data: bytes) -> int:
    """Add to `pm` (parsed from `data`) the notes that pretty_midi drops: a note-on never switched off
    (a recorder stopped with a key down) ends at the end of its track. Returns how many were added.

    The open notes are tracked as pretty_midi does (one note-off closes every earlier note-on of its
    channel and key); drum-channel notes are left out, like every reader leaves out drums."""
    import mido
    import pretty_midi

    midi = mido.MidiFile(file=io.BytesIO(data))
    added = 0
    for track in midi.tracks:
        tick, program, open_notes = 0, [0] * 16, {}
        for msg in track:
            tick += msg.time
            if msg.type == "program_change":
                program[msg.channel] = msg.program
            elif msg.type == "note_on" and msg.velocity > 0:
                open_notes.setdefault((msg.channel, msg.note), []).append((tick, msg.velocity))
            elif msg.type in ("note_on", "note_off") and (msg.channel, msg.note) in open_notes:
                kept = [n for n in open_notes[(msg.channel, msg.note)] if n[0] == tick]
                closed = len(kept) < len(open_notes[(msg.channel, msg.note)])
                if closed and kept:
                    open_notes[(msg.channel, msg.note)] = kept
                else:
                    del open_notes[(msg.channel, msg.note)]
        end = float(pm.tick_to_time(tick))
        for (channel, pitch), starts in open_notes.items():
            if channel == 9:
                continue
            inst = next((i for i in pm.instruments if i.program == program[channel] and not i.is_drum), None)
            if inst is None:
                inst = pretty_midi.Instrument(program[channel])
                pm.instruments.append(inst)
            for start_tick, velocity in starts:
                start = float(pm.tick_to_time(start_tick))
                inst.notes.append(pretty_midi.Note(velocity, pitch, start, max(end, start)))
                added += 1
    return added
