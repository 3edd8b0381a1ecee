"""The stacking-order study: the `ablate` command line, sweeps, benchmarks and analysis."""
