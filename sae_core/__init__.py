"""sae_core: a plain PyTorch library for residual-stream capture, AMAD layer groups and sparse autoencoders.

One module per concept: `capture` (the language model's residual stream), `activation_store`
(fp16 shards on disk), `distances` and `groups` (AMAD), `sae` (the TopK model), `train`,
`metrics`, `io` (SAELens layout). It never imports dagster.
"""
