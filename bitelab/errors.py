"""Errors a client or an admin can meet, each with a one-line message.

``BitelabError`` subclasses map onto the HTTP API's error shape
``{"error": {"code": CODE, "message": TEXT}}`` and its status codes.
"""


class BitelabError(Exception):
    """An error the API reports to the client; ``code`` and ``status`` fix the shape."""

    code = "internal"
    status = 500

    def __init__(self, message):
        super().__init__(message)
        self.message = message

    def to_json(self):
        """The API's error body."""
        return {"error": {"code": self.code, "message": self.message}}


class Unauthorized(BitelabError):
    code, status = "unauthorized", 401


class Forbidden(BitelabError):
    code, status = "forbidden", 403


class NotFound(BitelabError):
    code, status = "not_found", 404


class Unavailable(BitelabError):
    code, status = "unavailable", 409


class Elsewhere(Unavailable):
    """The work needs the hardware of ``host``, the board's own host."""

    def __init__(self, message, host):
        super().__init__(message)
        self.host = host


class Invalid(BitelabError):
    code, status = "invalid", 400


class TooLarge(Invalid):
    """A request body over the limit: ``invalid``, with HTTP's own status."""

    status = 413


class SetupFailed(BitelabError):
    code, status = "setup_failed", 502


class PowerFailed(BitelabError):
    code, status = "power_failed", 502


class PowerMismatch(PowerFailed):
    """The device read back another power state than the one just set."""


class StorageError(BitelabError):
    """The database is unavailable, busy past its wait, or full: nothing changed."""

    code, status = "storage", 503


class ConfigError(Exception):
    """A configuration file is wrong; the message names file, key or place, and problem."""
