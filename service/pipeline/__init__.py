"""From decoded events to scored predictions.

The processor and its partition tasks, windows, features, seasons, scores, intervals
and drift detectors.
"""
