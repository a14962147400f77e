"""Benchmark code behind ``scripts/bench-*``.

Relay benchmark (``scripts/bench-relay``): the orchestrator (:mod:`relay_bench`) starts the relay
under test in its own process (:mod:`relay_server`, or Janus via :mod:`janus_server`), peers in worker
processes (:mod:`peer_worker`), and measures the relay's CPU from ``/proc/<pid>/stat`` alone.
"""
