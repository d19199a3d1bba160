"""Errors that reach a user as one line, never as a traceback."""

from __future__ import annotations

__all__ = ["FluxError", "InvalidParameter", "UsageError", "DivergedError", "NoRunsMatch", "QueryError", "KeptLocally",
           "TrackingLost", "NotAuthenticated", "PermissionDenied"]


class FluxError(Exception):
    """A problem the user can fix; the CLI prints its message alone and exits with ``exit_code``."""

    exit_code = 1


class InvalidParameter(FluxError, ValueError):
    """A parameter value that is rejected before any work starts."""

    exit_code = 2

    def __init__(self, name: str, value: object, expected: str) -> None:
        super().__init__(f"invalid value for '{name}': {value!r} ({expected})")
        self.name = name
        self.value = value


class UsageError(FluxError):
    """A command line that does not parse (an unknown or incomplete option)."""

    exit_code = 2


class DivergedError(FluxError):
    """Training produced a non-finite loss: the learning rate is too large for this setup."""


class NoRunsMatch(FluxError):
    """A run selection that matches nothing: bad input, so the same exit code as a bad parameter."""

    exit_code = 2


class QueryError(FluxError):
    """A query that cannot run as written: a SQL error, an unknown column or parameter."""

    exit_code = 2


class KeptLocally(FluxError):
    """Training finished, but the run does not hold everything it made: what is missing is kept on local disk, and
    the run's ``mlflow_flux.missing`` tag says where and how to upload it."""

    exit_code = 3


class TrackingLost(KeptLocally):
    """The tracking server stopped answering: training went on, but the run does not hold everything it made."""


class NotAuthenticated(FluxError):
    """The tracking server answered 401: no credentials, or wrong ones."""

    exit_code = 4


class PermissionDenied(FluxError):
    """The tracking server answered 403: the user may not read or write what was asked."""

    exit_code = 5
