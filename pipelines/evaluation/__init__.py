"""Evaluation: metrics, baselines, plots, and the evaluation of a checkpoint on feature shards."""
