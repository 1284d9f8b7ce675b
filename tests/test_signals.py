"""semgap.bench.testbed.interrupts: SIGINT and SIGTERM become a named KeyboardInterrupt, held back inside cleanup."""
import os
import signal

import pytest

from semgap.bench.testbed import interrupts


@pytest.fixture
def guard():
    guard = interrupts.SignalGuard()
    previous = signal.getsignal(signal.SIGTERM)
    assert guard.install()
    yield guard
    guard.uninstall()
    assert signal.getsignal(signal.SIGTERM) is previous  # handed back


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # delivered before kill returns; the handler runs at the next bytecode


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_raises_a_keyboard_interrupt_that_names_it(guard, signum):
    with pytest.raises(KeyboardInterrupt) as stopped:
        send(signum)
    assert stopped.value.signal_name == guard.received == signal.Signals(signum).name


def test_held_cleanup_finishes_first_and_the_signal_is_raised_after_it(guard):
    steps = []
    with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
        with interrupts.held():
            send(signal.SIGTERM)
            steps.append("cleanup went on")
            with interrupts.held():  # an inner hold ends: still held by the outer one
                send(signal.SIGINT)
            steps.append("inner hold ended without raising")
    assert steps == ["cleanup went on", "inner hold ended without raising"]
    assert guard.received == "SIGTERM"  # the first signal is the one recorded


def test_held_without_reraise_only_records_the_signal(guard):
    with interrupts.held(reraise=False):
        send(signal.SIGINT)
    assert guard.received == "SIGINT" and not guard.pending
    with pytest.raises(interrupts.Interrupted):  # outside a hold the next one raises again
        send(signal.SIGINT)
