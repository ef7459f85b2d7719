"""RelayPACS benchmark suite: `uv run python -m bench` (see bench/README.md).

Measures, in one run on one machine, the gateway's verified and durable ingest of a CT-like
study against two baselines measured in the same run: writing the same bytes to disk with
fsync (the physical limit) and a peer resumable-upload server (@tus/server, no checksum, no
fsync). It reports figures and ratios; it is not a test and asserts nothing about timings.
"""
