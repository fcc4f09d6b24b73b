"""Benchmarks: the strategy bench over prompt suites, its tables, the speed targets, and the GPU and kernel benches."""
