"""Measurement: accuracy and agreement (more to come: latency, throughput, memory, energy)."""
