"""PeerLens finance and similarity library: data sources, returns, clustering, evaluation.

Plain Python (pandas, numpy, scipy, statsmodels); it never imports dagster, so every function
here can be used from a notebook or another orchestrator. The Dagster assets in `assets/` call it.
"""
