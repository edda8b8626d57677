"""Experiment tracking (`runs`) and the model in MLflow (`models`, imported only with MLflow)."""
