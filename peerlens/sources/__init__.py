"""Where the data comes from: tickers, the offline sample's loaders (both vintages), the EDGAR client and
parsers, the filings watch, yfinance, monthly returns, and the text history every text lands in."""
