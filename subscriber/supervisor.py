"""Keeps a verifier's background loops running.

The follower, the poller and the heartbeat are loops that end only when cancelled; Redis and
HTTP errors are handled inside them. Anything else escaping one of them is a bug or an
incompatible dependency (a tenacity release whose signature changed once killed the follower
at start, and the verifier went on reporting ``live``). So a loop that dies is logged with its
traceback, counted in ``keyherald_task_restarts_total{task}``, reported to the verifier (which
stops claiming to follow the stream) and restarted with exponential backoff and jitter.
"""

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from .cancellation import raise_if_cancelled
from .constants import task_restart_max_s, task_restart_min_s
from .metrics import Metrics

logger = logging.getLogger(__name__)


def restart_delay_s(failures: int, rng: random.Random) -> float:
    """Backoff before restart number ``failures`` (1-based): doubling from the minimum up to
    the maximum, drawn from the upper half so that it still grows."""
    ceiling: float = min(task_restart_max_s, task_restart_min_s * 2.0 ** min(failures - 1, 30))
    return ceiling * (0.5 + 0.5 * rng.random())


async def supervise(
    name: str,
    start: Callable[[int], Coroutine[Any, Any, object]],
    *,
    metrics: Metrics,
    on_death: Callable[[str, BaseException], None],
) -> None:
    """Run ``start(restarts)`` until cancelled, restarting it whenever it raises.

    :param start: makes the loop's coroutine; told how many restarts came before.
    :param on_death: told the task name and the error, before the backoff.
    """
    loop = asyncio.get_running_loop()
    rng = random.Random()
    restarts = failures = 0
    while True:
        started = loop.time()
        try:
            await start(restarts)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise_if_cancelled()
            # A loop that ran for a while before dying starts the backoff afresh.
            failures = 1 if loop.time() - started > task_restart_max_s else failures + 1
            restarts += 1
            metrics.child(metrics.task_restarts, name).inc()
            on_death(name, e)
            delay = restart_delay_s(failures, rng)
            logger.error(
                "background task %s died (%s), restart %d in %.2fs",
                name,
                type(e).__name__,
                restarts,
                delay,
                exc_info=e,
                extra={"task": name},
            )
            await asyncio.sleep(delay)
        else:
            raise_if_cancelled()
            logger.error("background task %s ended on its own, restarting", name)
            restarts += 1
            metrics.child(metrics.task_restarts, name).inc()
            await asyncio.sleep(task_restart_min_s)
