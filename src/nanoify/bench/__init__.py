"""Measurement: latency and throughput (``latency.py``, shared with quantize) and the benchmark command
(``run.py``: fresh process per model, memory, streams, energy where a sensor is readable, report). Scores
and agreement come from the model's task (:mod:`nanoify.tasks`)."""
