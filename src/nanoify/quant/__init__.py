"""Quantization: streaming histograms, range choice (observers), calibration and graph writing."""
