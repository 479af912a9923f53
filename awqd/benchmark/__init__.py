"""The Benchmark RPC: kernel latencies on random weights, and end-to-end single-query latency per kernel family.

params.py checks a request, runner.py plans it against the node and runs it under a per-device lock and a
deadline, kernel.py and single_query.py measure, verdict.py draws the conclusions, report.py holds the results.
"""
