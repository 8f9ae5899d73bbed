"""Do a clustering's pairs trade? Cointegration, trading one window, and the walk-forward backtest."""
