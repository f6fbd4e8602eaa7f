from deepfeed.resources.artifact_store import ArtifactStoreResource
from deepfeed.resources.mlflow_tracking import MlflowResource
from deepfeed.resources.model_source import ModelSourceResource

__all__ = ["ArtifactStoreResource", "MlflowResource", "ModelSourceResource"]
