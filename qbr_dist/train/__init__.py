"""Distributed runtime: Ray Train workers, each driving a DeepSpeed engine."""


class Terminated(KeyboardInterrupt):
    """SIGTERM to the driver (`kill`, `timeout`, a stopping pod), as an interrupt that the CLI ends with one line and
    exit status 143 (`runtime.start_ray` sets the handler)."""
