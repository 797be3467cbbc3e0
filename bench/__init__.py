"""Benchmarks: scripts that print ratios measured side by side, never timed tests.

    python -m bench.kernels        fused log-prob + ORPO kernels against eager / compile / Liger (GPU)
    python -m bench.decode_speed   greedy decoding against transformers generate
"""
