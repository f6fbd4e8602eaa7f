from deepfeed.sensors.drift import drift_sensor
from deepfeed.sensors.feedback import feedback_sensor
from deepfeed.sensors.performance import performance_sensor

__all__ = ["drift_sensor", "feedback_sensor", "performance_sensor"]
