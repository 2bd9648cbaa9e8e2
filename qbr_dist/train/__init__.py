"""Distributed runtime: Ray Train workers, each driving a DeepSpeed engine."""
import threading

# Set by the driver's SIGTERM handler (`runtime.start_ray` installs it), which then raises KeyboardInterrupt: the CLI
# ends such an interrupt with one line and exit status 143. A record, not an exception type, because an exception
# raised inside a Ray call reaches the caller as a plain KeyboardInterrupt.
SIGTERM_RECEIVED = threading.Event()
