"""What can go wrong in a call to the lab, for both HTTP clients of the CLI.

Every failure of a call leaves the client as one of three exceptions, so that
the command line can turn it into a one-line message and an exit status:
``Refused`` (the server said no, 4xx), ``Failed`` (the server broke, 5xx or
an answer that is not the API's JSON) and ``Unreachable`` (no answer at all).
Standard library only: the quick path of the CLI imports it.
"""

import json


class ClientError(Exception):
    """Base of the errors a call can end with; ``str()`` is one line for a user."""


class Refused(ClientError):
    """The server refused the request (4xx); ``body`` is its JSON error, if any."""

    def __init__(self, status, code, message, body=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class Failed(ClientError):
    """The server answered with a 5xx status or something that is not JSON.

    ``code`` is the API's error code (``setup_failed``, ``power_failed``...)
    when the answer has one.
    """

    def __init__(self, message, body=None, code=None):
        super().__init__(message)
        self.body = body
        self.code = code


class Unreachable(ClientError):
    """No answer: the connection failed, was cut, or the request timed out."""


class WaitCancelled(Exception):
    """The user stopped waiting for a board; ``str()`` says what became of it."""


def decode_answer(method, url, status, raw):
    """The JSON document of a 2xx answer; the matching ``ClientError`` otherwise."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        document = None
    where = f"{method} {url}"
    if 200 <= status < 300:
        if document is None:
            raise Failed(f"{where}: HTTP {status} but the answer is not JSON")
        return document
    refusal(method, url, status, document)


def refusal(method, url, status, document):
    """Raise the ``Refused`` or ``Failed`` a non-2xx answer stands for."""
    where = f"{method} {url}"
    error_body = document.get("error") if isinstance(document, dict) else None
    if isinstance(error_body, dict) and "message" in error_body:
        code = str(error_body.get("code", status))
        message = " ".join(str(error_body["message"]).split())
    else:
        code, message = str(status), f"{where}: HTTP {status} without an API error"
        document = None
    if 400 <= status < 500:
        raise Refused(status, code, message, document)
    raise Failed(f"server error ({code}): {message}", document, code)
