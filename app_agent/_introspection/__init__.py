"""Looking inside the live app: stack and stats, health checks, the profiler, tracemalloc, log
levels."""
