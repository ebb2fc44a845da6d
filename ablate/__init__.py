"""ablate: ablations of on-policy self-distillation for LLM reasoning."""

__version__ = "0.1.0"

import threading

# Set when the process is asked to stop (SIGTERM/SIGINT, see __main__). The handler also raises
# KeyboardInterrupt, but Python drops exceptions raised inside GC callbacks, so long loops check this too.
STOP = threading.Event()
_reason = ["stop requested"]


def request_stop(reason: str) -> None:
    _reason[0] = reason
    STOP.set()


def check_stop() -> None:
    """Raise KeyboardInterrupt if a stop was requested (a signal whose exception may have been swallowed)."""
    if STOP.is_set():
        raise KeyboardInterrupt(_reason[0])
