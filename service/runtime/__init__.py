"""The long-running daemon around the pipeline.

The run loop, batch completion, health endpoints, lag, the watchdog and metrics.
"""
