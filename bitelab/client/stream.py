"""Server-sent events (``text/event-stream``), read as they arrive.

``GET /api/v1/events/stream`` sends one event per block of lines::

    event: position
    data: {"waiter": 7, "target": "zynq", "position": 2, "ahead": 1, "total": 3}

and a blank line; lines that start with ``:`` are comments (the server's
keep-alives).  ``EventReader`` takes the bytes in whatever pieces the
network delivers them and returns the complete events, following the
HTML standard's parsing rules: lines end with CRLF, LF or CR; several
``data`` lines join with newlines; a field without a colon has an empty
value; an event without data is not dispatched; a byte-order mark at the
start is dropped.  Standard library only: ``bitelab watch`` reads the
stream over ``http.client``.
"""

import codecs
import json
import re
from typing import NamedTuple

#: the type of an event without an ``event`` field
DEFAULT_KIND = "message"
#: the server sends a keep-alive every 15 s: a stream silent this long is dead
STREAM_SILENCE = 45.0

# only these end a line: str.splitlines would split at form feeds and more
_LINE = re.compile(r"([^\r\n]*)(\r\n|\r|\n)")


class ServerEvent(NamedTuple):
    """One dispatched event: its type, its data text and its ``id``, if any."""

    kind: str
    data: str
    id: str | None = None

    def document(self):
        """The data as JSON (a dict for the lab's events), or ``None`` if it is not."""
        try:
            return json.loads(self.data)
        except ValueError:
            return None


class EventReader:
    """Turns pieces of an event stream into ``ServerEvent``s; see the module."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._started = False
        # a CR ended the last piece: a LF starting the next belongs to it
        self._after_cr = False
        self._kind = ""
        self._data = []
        self._id = None

    def feed(self, chunk):
        """The events completed by ``chunk`` (bytes), in order."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        if text:
            self._after_cr = text.endswith("\r")
        text = self._pending + text
        events = []
        end = 0
        for match in _LINE.finditer(text):
            end = match.end()
            event = self._line(match.group(1))
            if event is not None:
                events.append(event)
        self._pending = text[end:]
        return events

    def _line(self, line):
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._kind = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self):
        kind, data = self._kind or DEFAULT_KIND, self._data
        self._kind, self._data = "", []
        if not data:
            return None
        # the last event id stays until another replaces it, as the standard says
        return ServerEvent(kind, "\n".join(data), self._id or None)
