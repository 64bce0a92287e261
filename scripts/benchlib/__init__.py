"""Benchmarks behind scripts/bench; each module has main(argv) -> int."""
