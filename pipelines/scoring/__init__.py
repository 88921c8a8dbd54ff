"""Scoring a library of recordings with a trained model (`jobs/score.py`).

inputs (listing, manifests, hashing, model version) -> prepare (decode, features, alignment; CPU tasks)
-> infer (actor pool, model loaded once) -> aggregate (overlap aggregation per recording) -> publish
(Parquet parts, run manifest, `latest.json`). `results` documents the output columns.
"""
