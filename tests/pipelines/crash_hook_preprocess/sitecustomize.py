"""Test-only: a preprocessing worker given a recording whose id holds `crash me` dies (os._exit), as a decoder
segfault or the kernel's OOM killer would end it. Put on the PYTHONPATH of a preprocessing job's workers by
tests/pipelines/test_preprocess.py; nothing in the product imports it."""
import os

try:
    from pipelines.features import processor as _processor

    _real_call = _processor.RecordingProcessor.__call__

    def _call(self, record):
        if "crash me" in str(record.get("recording_id", "")):
            os._exit(139)
        return _real_call(self, record)

    _processor.RecordingProcessor.__call__ = _call
except Exception:   # not a preprocessing worker's path: leave the interpreter alone
    pass
