from deepfeed.sensors.corpus import corpus_source_sensor
from deepfeed.sensors.drift import drift_sensor
from deepfeed.sensors.feedback import feedback_sensor
from deepfeed.sensors.performance import performance_sensor

__all__ = ["corpus_source_sensor", "drift_sensor", "feedback_sensor", "performance_sensor"]
from deepfeed.sensors.mlflow_runs import (
    mlflow_run_canceled_sensor,
    mlflow_run_failed_sensor,
    mlflow_run_finished_sensor,
)

MLFLOW_RUN_SENSORS = [mlflow_run_finished_sensor, mlflow_run_failed_sensor, mlflow_run_canceled_sensor]
