"""MLflow pyfunc loader for a deepfeed checkpoint (copied into each checkpoint as code/).

Self-contained on purpose: MLflow imports this file from the checkpoint's own code/ folder,
so `mlflow.pyfunc.load_model("models:/deepfeed@champion")` and `mlflow models serve` work
with only torch, transformers and pandas installed, without the deepfeed package.
The checkpoint folder is the model's data (MLmodel `data: .`), so the model moves with it.
"""

from __future__ import annotations

from typing import Any

DEFAULT_MAX_NEW_TOKENS = 32


class DeepfeedCausalLM:
    """Greedy generation: the same decoding the deepfeed server uses, so answers match."""

    def __init__(self, checkpoint: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        self.model.eval()

    def _prompts(self, model_input: Any) -> list[str]:
        if isinstance(model_input, str):
            return [model_input]
        if hasattr(model_input, "columns"):  # a pandas DataFrame, what the REST scoring server sends
            column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
            return [str(v) for v in model_input[column].tolist()]
        if isinstance(model_input, dict):
            prompts = model_input.get("prompt", [])
            return [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
        return [str(p) for p in model_input]

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[str]:
        max_new_tokens = int((params or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        texts = []
        for prompt in self._prompts(model_input):
            # The chat template the model was fine-tuned with (deepfeed.core.train.modeling.prompt_ids).
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            input_ids = self.torch.tensor([ids])
            with self.torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=self.torch.ones_like(input_ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
            texts.append(self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip())
        return texts


def _load_pyfunc(data_path: str) -> DeepfeedCausalLM:
    """MLflow's entry point for a `loader_module` pyfunc flavor."""
    return DeepfeedCausalLM(data_path)
