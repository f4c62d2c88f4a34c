"""Benchmark runner for langchain-sqlalchemy-cache: `python -m benchmarks.run --help`."""
