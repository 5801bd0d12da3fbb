"""Stopping the demo: Ctrl-C, SIGTERM or SIGHUP stop every child and exit 130.

While the event loop runs, stop signals are the loop's (they cancel the demo task); outside
it, a Python handler raises :class:`Interrupted`.
"""

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: How often a stop signal's cancellation is repeated until the demo task has finished.
CANCEL_RETRY_S = 0.5


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP: stop every child and exit 130.

    A ``KeyboardInterrupt`` so that asyncio re-raises it wherever the signal lands: raised from
    a signal handler while the loop runs a callback or another task, an ``Exception`` would be
    logged or stored there and never reach the demo's ``run``.
    """


def raise_interrupted(signum: int, frame: object) -> NoReturn:
    raise Interrupted(signal.Signals(signum).name)


async def run_until_stopped(run: Callable[[], Awaitable[T]]) -> T:
    """Run the demo; a stop signal cancels it through the event loop.

    While the loop runs, signals are the loop's (``add_signal_handler``), not Python handlers
    that raise: a handler raising while the orchestrator forks a child lands in an at-fork
    hook, where the exception is printed and dropped, and the demo would run on.
    """
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    received: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        received.append(sig)
        cancel_until_done()

    def cancel_until_done() -> None:
        # redis-py can swallow a cancellation that lands while a command reads its reply (the
        # command returns an empty result and the task runs on), so one cancel() may be lost:
        # repeat it until the demo task has actually finished.
        if not main.done():
            main.cancel()
            loop.call_later(CANCEL_RETRY_S, cancel_until_done)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await run()
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0].name) from None
        raise
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, raise_interrupted)
