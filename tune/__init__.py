"""Ray Tune hyperparameter search over the training job (Optuna + ASHA). Nothing else lives here:
training is in pipelines/training/, evaluation in pipelines/evaluation/."""
