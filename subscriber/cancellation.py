"""Stopping tasks that talk to Redis, on Python 3.11.

Python 3.11's ``asyncio.wait_for`` returns normally when the task awaiting it is cancelled in
the loop turn where the awaited operation completes (3.12 rebuilt it on ``asyncio.timeout``
and raises instead), and redis-py sends every command through it when the connection has a
socket timeout. A cancellation that lands while a command is being sent is then lost: the
command runs on, its reply comes back as usual, and only ``Task.cancelling()`` remembers that
the task was asked to stop. Hence:

- a loop checks :func:`raise_if_cancelled` after its Redis commands, before it waits for
  anything else (a blocking read, an event, a sleep);
- whoever stops a task that holds nothing to clean up uses :func:`cancel_and_wait`, which
  cancels again while the task is still running (a blocking read that began after a lost
  cancellation does raise on the next one).
"""

import asyncio
from typing import Any

#: How often :func:`cancel_and_wait` repeats the cancellation of a task still running.
recancel_s = 0.05


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task was cancelled and the cancellation was
    lost on the way (see the module docstring)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: "asyncio.Task[Any]") -> None:
    """Cancel ``task`` until it ends, and wait for it; its outcome is discarded.

    Only for tasks with no cleanup of their own to await: a repeated cancellation would
    interrupt it.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel_s)
    await asyncio.gather(task, return_exceptions=True)
