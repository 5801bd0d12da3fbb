"""Exceptions of the upstream watcher::

WatcherError
└── UpstreamError        an upstream's discovery document or JWKS could not be fetched or used
"""


class WatcherError(Exception):
    """Root of every error the watcher raises."""


class UpstreamError(WatcherError):
    """An upstream's discovery document or JWKS could not be fetched or used."""
