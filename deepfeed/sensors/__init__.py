from deepfeed.sensors.corpus import corpus_source_sensor
from deepfeed.sensors.drift import drift_sensor
from deepfeed.sensors.feedback import feedback_sensor
from deepfeed.sensors.performance import performance_sensor

__all__ = ["corpus_source_sensor", "drift_sensor", "feedback_sensor", "performance_sensor"]
