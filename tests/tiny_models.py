"""Tiny randomly initialised models built in the tests: no downloads, no network."""

from transformers import LlamaConfig

N_LAYERS, D_MODEL, VOCAB = 3, 32, 100


def tiny_llama_config(max_position_embeddings: int = 128) -> LlamaConfig:
    """A 3-layer Llama of width 32 (4 heads, 2 KV heads) over a 100-token vocabulary."""
    return LlamaConfig(
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=max_position_embeddings,
    )
