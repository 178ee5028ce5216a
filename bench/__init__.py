"""Benchmarks for pyfp8gemm.

- `python -m bench` (bench/cli.py): pyfp8gemm next to cuBLAS and DeepGEMM, as a table, JSON and
  a plot. See bench/README.md.
- bench/test_regression.py: a pytest-benchmark suite to catch speed regressions on the GPU.
"""
