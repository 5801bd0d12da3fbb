"""Integrity fixtures: the subscriber suite's in-process issuer harness."""

from tests.subscriber.conftest import issuer

__all__ = ["issuer"]
