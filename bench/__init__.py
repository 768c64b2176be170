"""The performance benchmark: `python -m bench.run` (or `make bench`) prints every figure beside its baseline."""
