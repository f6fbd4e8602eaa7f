from deepfeed.resources.artifact_store import ArtifactStoreResource
from deepfeed.resources.locations import LocationsResource
from deepfeed.resources.mlflow_tracking import MlflowResource
from deepfeed.resources.model_source import ModelSourceResource

__all__ = ["ArtifactStoreResource", "LocationsResource", "MlflowResource", "ModelSourceResource"]
