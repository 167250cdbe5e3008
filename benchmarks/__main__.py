"""`python -m benchmarks`: the CPU suite (see run_all)."""

from .run_all import main

main()
