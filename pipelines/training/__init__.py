"""Training: batches from feature rows, the per-worker loop, and the Ray Train driver."""
