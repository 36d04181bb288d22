"""Offline and demo tools: backtest, replay, bundled datasets, the embedded broker and the demo."""
