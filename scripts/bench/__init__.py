"""Relay benchmark (``scripts/bench-relay``): our SFU vs aiortc's transcoding MediaRelay vs Janus.

The orchestrator (:mod:`relay_bench`) starts the relay under test in its own process, peers in worker
processes (:mod:`peer_worker`), and measures the relay's CPU from ``/proc/<pid>/stat`` alone.
"""
