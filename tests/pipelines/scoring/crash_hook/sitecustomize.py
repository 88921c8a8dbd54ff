"""Test-only: a worker that prepares a recording named `crash me` dies (os._exit), as a decoder segfault
would. Put on the PYTHONPATH of a scoring job's workers by test_score_job.py; nothing in the product
imports it."""
import os

try:
    from pipelines.scoring import prepare as _prepare

    _real_call = _prepare.SpanPreparer.__call__

    def _call(self, entry):
        if "crash me" in entry.get("recording_id", ""):
            os._exit(139)
        return _real_call(self, entry)

    _prepare.SpanPreparer.__call__ = _call
except Exception:   # not a scoring worker's path: leave the interpreter alone
    pass
