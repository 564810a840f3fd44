"""Benchmarks of the ML core, each a ratio against a reference measured in the same run."""
