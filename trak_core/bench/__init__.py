"""``python -m trak_core.bench``: featurizing throughput and peak memory of the gradient paths."""
