"""Statistics on predictions: metrics with intervals, McNemar, calibration and prediction
sets. Imports nothing else of the project."""
