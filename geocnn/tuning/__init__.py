"""Hyperparameter search (`geocnn tune`): Optuna studies whose trials are validation-only runs of the one engine."""
