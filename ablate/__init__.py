"""ablate: ablations of on-policy self-distillation for LLM reasoning."""

__version__ = "0.1.0"

import signal
import threading
from contextlib import contextmanager

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


_deferring = [0]


def on_signal(signum, _frame) -> None:
    """SIGTERM (a scheduler) and SIGINT (Ctrl-C): set STOP and raise KeyboardInterrupt, so that the running cell is
    recorded as interrupted and the sweep stops; inside `stop_deferred()` only set STOP (raised on leaving it)."""
    reason = f"signal {signal.Signals(signum).name}"
    request_stop(reason)
    if not _deferring[0]:
        raise KeyboardInterrupt(reason)


def handle_stop_signals() -> None:
    """SIGTERM and SIGINT call `on_signal` in this process (only its main thread may install handlers)."""
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


@contextmanager
def stop_deferred():
    """A stop requested inside only sets STOP (the caller checks it after): a row written here must get back its
    id to be recorded (a signal between the INSERT and the return left a cell 'running' forever)."""
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
