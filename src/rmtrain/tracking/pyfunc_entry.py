"""The logged model's code (MLflow "models from code"): loading it defines the reward model from
rmtrain's own class, so nothing is pickled into the model."""

import mlflow

from rmtrain.tracking.models import RewardModel

mlflow.models.set_model(RewardModel())
