"""PeerLens finance and similarity library, one subpackage per concern:

    layout            where every table and artifact lives, and the one atomic write
    sources/          tickers, the sample loaders (2017 and 2024 vintages), EDGAR, the filings watch,
                      yfinance, monthly returns, and the text history (texts, known_by, point in time)
    similarity/       the methods registry, clustering, embeddings, point-in-time clusterings,
                      company latent profiles, cluster explanations
    mean_correlation/ MC three ways, the yearly study, rolling θ, matched sizes, bootstrap
    pairs/            cointegration, one trading window, the walk-forward backtest
    query/            peers and pair explanations, and the `peerlens` command line

Plain Python (pandas, numpy, scipy, statsmodels); it never imports dagster, so every function
here can be used from a notebook or another orchestrator. The Dagster assets in `assets/` call it.
"""
