"""sae_core: a plain PyTorch library for residual-stream capture, AMAD layer groups and sparse autoencoders.

One module per concept: `text` (what counts as a description), `capture` (the language model's
residual stream), `activation_store` (fp16 shards on disk), `massive_activations` (the tokens
that turn into attention sinks), `token_split` (what an SAE trains and is scored on),
`distances` and `groups` (AMAD), `sae` (the TopK model and the shared
base), `architectures` (BatchTopK, ReLU + L1), `train` (one loop for all three), `checkpoint`
(resumable training state), `metrics`, `splice` (CE-loss score and KL with the SAE patched into
the model), `features` (pooled company codes), `io` (SAELens layout) and `interop` (SAEs saved by
SAELens and sparsify). It never imports dagster.
"""
