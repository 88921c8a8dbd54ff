"""What a job prints, and where the rest goes.

A job's console holds what a person needs: one line per stage as it starts, live progress for the long
ones, a summary line per stage, where the outputs are, and errors in one line. Everything else — Ray's
progress bars and its workers' output, library warnings, C-level logs, tracebacks — goes to a log file,
`<job out>/logs/<job>-<UTC time>.log`, named at the end; `--verbose` brings it back to the console.

How: `start()` keeps a handle on the real terminal, points file descriptor 2 (where Ray's C++ core, FluidSynth
and onnxruntime write) at the log file, routes Python logging and warnings to it, and replaces `sys.stdout`
with a router that passes the job's own lines to the terminal and sends the lines Ray forwards from its
workers (`(RayTrainWorker pid=...) ...`) to the log. Lines a worker marks with PROGRESS_MARK are shown as
progress. Without `start()` (library use, tests) nothing is redirected and `progress` prints plain lines.
"""
from __future__ import annotations

import atexit
import io
import logging
import os
import re
import sys
import tempfile
import time
import traceback
import warnings

PROGRESS_MARK = "PIANOEVAL-PROGRESS "
TICK = "+1 "
TICK_EVERY_S = 15.0            # counted progress on a console that is not a terminal: a line at most this often
# a line Ray forwards from another process: "(RayTrainWorker pid=12)", "(pid=3, ip=10.0.0.2)", "(raylet)", ...
_WORKER_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)*\s*\((?:\x1b\[[0-9;]*m)*(?:[\w.:\-()]+ )*"
                          r"(?:pid=\d+|raylet|gcs_server|autoscaler|monitor|dashboard\w*)\b")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Router(io.TextIOBase):
    """sys.stdout while a console runs: the job's lines to the terminal, forwarded worker output to the log."""

    def __init__(self, console: "Console") -> None:
        self.console = console
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self.console._route(line)
        return len(text)

    def flush(self) -> None:
        if self._buffer and not _WORKER_LINE.match(self._buffer):
            self.console._route(self._buffer)
            self._buffer = ""
        self.console.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class _OwnWarningsOnce(logging.Filter):
    """Warnings of this project's loggers (pipelines.*, model.*, jobs, pianoeval.*), each message once."""

    PREFIXES = ("pipelines", "model", "jobs", "pianoeval", "__main__")

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.PREFIXES):
            return False
        text = record.getMessage().splitlines()[0] if record.getMessage() else ""
        record.exc_info, record.exc_text = None, None         # the traceback: the log only
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


class Console:
    def __init__(self) -> None:
        self.active = False
        self.verbose = True
        self._term = None               # the terminal's stdout / stderr once started; sys.* before
        self._term_err = None
        self.log = None
        self.log_path: str | None = None
        self.log_uri: str | None = None
        self._progress_open = False
        self._last_progress: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    # --- set-up ---------------------------------------------------------------------------------------
    def start(self, job: str, out_uri: str | None, *, verbose: bool = False) -> None:
        """Route this process's output (module docstring); the log goes under `<out_uri>/logs/`."""
        if self.active:
            return
        from pipelines.io import storage

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{job}-{stamp}.log"
        if out_uri and not storage.is_s3(out_uri):
            folder = os.path.join(storage.resolve(out_uri)[1], "logs")
            os.makedirs(folder, exist_ok=True)
            self.log_path = os.path.join(folder, name)
        else:                                   # S3 (or no output): written here, copied there at the end
            self.log_path = os.path.join(tempfile.mkdtemp(prefix="pianoeval-log-"), name)
            self.log_uri = storage.join(out_uri, "logs", name) if out_uri else None
        self.verbose = verbose
        self._term = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
        self._term_err = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8",
                                   errors="replace")
        self.log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        sys.stdout.flush()
        sys.stderr.flush()
        if not verbose:                         # C-level and Python stderr: the log
            os.dup2(self.log.fileno(), 2)
            sys.stderr = self.log
        sys.stdout = _Router(self)
        handler = logging.StreamHandler(self.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        if verbose:
            root.addHandler(logging.StreamHandler(self.term_err))
        else:                                   # the project's own warnings stay visible, each once
            own = logging.StreamHandler(self._term_err)
            own.setLevel(logging.WARNING)
            own.setFormatter(logging.Formatter("warning: %(message)s"))
            own.addFilter(_OwnWarningsOnce())
            root.addHandler(own)
        logging.captureWarnings(True)          # library warnings: the log (py.warnings logger)
        warnings.simplefilter("default")
        self.active = True
        atexit.register(self.close)

    def close(self) -> None:
        """Flush the log and, for an S3 output, copy it there."""
        if not self.active:
            return
        self.end_progress()
        self.active = False
        try:
            sys.stdout.flush()        # the router stays: worker lines Ray flushes at exit still go to the log
        except Exception:
            pass
        if self.log is not None:
            self.log.flush()
        if self.log_uri:
            try:
                from pipelines.io import storage
                storage.upload_file(self.log_path, self.log_uri)
            except Exception as exc:   # the job's outputs stand; say where the log stayed
                self.term_err.write(f"warning: the log could not be copied to {self.log_uri} ({exc}); "
                                    f"it is at {self.log_path}\n")

    @property
    def term(self):
        return self._term or sys.stdout

    @property
    def term_err(self):
        return self._term_err or sys.stderr

    @property
    def where(self) -> str:
        """Where the log ends up (its URI on S3, else the local path)."""
        return self.log_uri or self.log_path or ""

    # --- writing --------------------------------------------------------------------------------------
    def flush(self) -> None:
        for stream in (self.term, self.log):
            if stream is not None:
                stream.flush()

    def _route(self, line: str) -> None:
        if PROGRESS_MARK in line:
            payload = _ANSI.sub("", line).split(PROGRESS_MARK, 1)[1].strip()
            if payload.startswith(TICK):            # "+1 <total> <what>": one more item of a counted stage
                _, total, what = payload.split(" ", 2)
                n = self._counts[what] = self._counts.get(what, 0) + 1
                self.progress(f"{what} {min(n, int(total))}/{total}",
                              every_s=0.0 if n == int(total) else TICK_EVERY_S, key=what)
            else:
                self.progress(payload)
            return
        if self.log is not None:
            self.log.write(line + "\n")
        if self.verbose or not _WORKER_LINE.match(line):
            self.end_progress()
            self.term.write(line + "\n")

    def error(self, text: str) -> None:
        """One line on the console's stderr; the log gets it too."""
        self.end_progress()
        if self.log is not None and self.active:
            self.log.write(text + "\n")
        self.term_err.write(text + "\n")
        self.term_err.flush()

    def exception(self, exc: BaseException) -> None:
        """The traceback to the log (or stderr without a console)."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        (self.log if self.active and self.log is not None else self.term_err).write(text)

    def progress(self, text: str, *, every_s: float = 0.0, key: str = "") -> None:
        """Live progress: rewritten in place on a terminal, else a plain line (at most one per `every_s`
        for each `key`)."""
        now = time.monotonic()
        if self.log is not None and self.active:
            self.log.write("progress: " + text + "\n")
        tty = self.term.isatty() if hasattr(self.term, "isatty") else False
        if tty:
            self.term.write("\r\x1b[2K  " + text)
            self.term.flush()
            self._progress_open = True
        elif now - self._last_progress.get(key, -1e9) >= every_s:
            self.term.write("  " + text + "\n")
            self.term.flush()
            self._last_progress[key] = now

    def end_progress(self) -> None:
        if self._progress_open:
            self.term.write("\n")
            self._progress_open = False


CONSOLE = Console()


def tick(what: str, total: int) -> None:
    """From a Ray worker: one more of `total` items of a stage (the job's console counts and shows them)."""
    print(f"{PROGRESS_MARK}{TICK}{int(total)} {what}", flush=True)


def progress(text: str, *, every_s: float = 0.0, key: str = "") -> None:
    """Report progress of a long stage: to the job's console, or a plain line without one."""
    if CONSOLE.active:
        CONSOLE.progress(text, every_s=every_s, key=key)
    else:
        now = time.monotonic()
        if now - CONSOLE._last_progress.get(key, -1e9) >= every_s:
            print("  " + text, flush=True)
            CONSOLE._last_progress[key] = now
