"""Benchmarks of SAM-CLIP against its teachers; run from the repository root: `python -m benchmarks --help`."""
