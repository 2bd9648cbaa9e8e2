"""Distributed runtime: Ray Train workers, each driving a DeepSpeed engine."""
import threading

SIGTERM_RECEIVED = threading.Event()  # set by the driver's SIGTERM handler (`runtime.start_ray` installs it)


class Terminated(KeyboardInterrupt):
    """SIGTERM to the driver (`kill`, `timeout`, a stopping pod), as an interrupt that the CLI ends with one line and
    exit status 143. Raised inside a Ray call it reaches the caller as a plain KeyboardInterrupt, so the CLI asks
    `SIGTERM_RECEIVED`."""
