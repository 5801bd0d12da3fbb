"""The soak's cluster fixture: the test's timing comes in as the indirect parameter."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .harness import Cluster, Timing


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """A cluster with the test's timing; every process is stopped afterwards, pass or fail."""
    timing: Timing = request.param
    c = Cluster(timing, tmp_path)
    try:
        yield c
    finally:
        await c.close()
