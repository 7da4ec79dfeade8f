"""hotpath's benchmarks: ``python -m bench NAME [--quick]`` (``all`` runs every one).

Each benchmark compares side by side, in one run, hotpath against its baseline and peers,
and reports medians, p99 and ratios, never a lone absolute time.
"""
