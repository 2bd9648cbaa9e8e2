"""Distributed runtime: Ray Train workers, each driving a DeepSpeed engine."""
import threading

# Set by the driver's SIGTERM handler (`runtime.start_ray` installs it), which then raises KeyboardInterrupt: the CLI
# ends such an interrupt with one line and exit status 143. A record, not an exception type, because an exception
# raised inside a Ray call reaches the caller as a plain KeyboardInterrupt.
SIGTERM_RECEIVED = threading.Event()

# Set by the driver's SIGINT handler (the CLI's) and SIGTERM handler: a stage that begins once it is set raises
# KeyboardInterrupt. An interrupt that lands where Python cannot raise it (a module's import-time clean-up reports
# it as "Exception ignored in ...") would otherwise be lost, and the command would run on to its end.
INTERRUPTED = threading.Event()
