"""Benchmarks for the bridge: `make bench` runs `python -m bench` (see bench/__main__.py)."""
