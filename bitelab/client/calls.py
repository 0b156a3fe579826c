"""The calls of the bitelab HTTP API, one method each, whatever the transport.

A subclass provides ``call(method, path, body=None, auth=True, longer=0)``,
returning something to ``await`` for the decoded JSON answer (``longer``:
seconds the server may hold the answer beyond the usual time-out):
``http.LabAPI`` does it with treq, ``quick.QuickAPI`` with the standard
library.
"""

from urllib.parse import quote, urlencode


def segment(name):
    """``name`` quoted into one URL path segment."""
    return quote(name, safe="")


class Calls:
    """``/api/v1`` of one lab; ``base_url`` is the lab's address."""

    base_url: str

    def url(self, path):
        """The absolute URL of ``path`` under ``/api/v1``."""
        return self.base_url.rstrip("/") + "/api/v1" + path

    def info(self, login=None):
        """``GET /info``: name, version, SSH port and host key (no token).

        With ``login`` (a board's name), the SSH service of the host serving
        that board's console.
        """
        query = "?" + urlencode({"login": login}) if login else ""
        return self.call("GET", "/info" + query, auth=False)

    def whoami(self):
        """``GET /whoami``: the token's user and whether it is an admin."""
        return self.call("GET", "/whoami")

    def revoke_token(self):
        """``DELETE /tokens/current``: revoke the token in use."""
        return self.call("DELETE", "/tokens/current")

    def login_link(self):
        """``POST /login-link``: a one-time link signing the token's user in
        to the web UI (its ``path``, and when it expires)."""
        return self.call("POST", "/login-link", {})

    def classes(self):
        """``GET /classes``: the board classes with their free and total counts."""
        return self.call("GET", "/classes")

    def boards(self):
        """``GET /boards``: every board."""
        return self.call("GET", "/boards")

    def board(self, name):
        """``GET /boards/NAME``: one board."""
        return self.call("GET", "/boards/" + segment(name))

    def reserve(
        self, name, sshpubkey=None, timeout=None, wait=None, waiter=None, priority=None
    ):
        """``POST /boards/NAME_OR_CLASS/reserve``: the board reserved.

        With ``wait`` (seconds) the server holds the request that long for a
        board to be freed; ``waiter`` resumes a place in the queue, and
        ``priority`` (admins) orders it.
        """
        body = {}
        for key, value in (
            ("sshpubkey", sshpubkey),
            ("timeout", timeout),
            ("wait", wait),
            ("waiter", waiter),
            ("priority", priority),
        ):
            if value is not None:
                body[key] = value
        return self.call(
            "POST", f"/boards/{segment(name)}/reserve", body, longer=wait or 0
        )

    def release(self, name, force=False, reason=None):
        """``POST /boards/NAME/release``: the board after release."""
        body = {"force": True} if force else {}
        if reason is not None:
            body["reason"] = reason
        return self.call("POST", f"/boards/{segment(name)}/release", body)

    def maintenance(self, name, reason):
        """``POST /boards/NAME/maintenance``: take a board out (admins)."""
        return self.call(
            "POST", f"/boards/{segment(name)}/maintenance", {"reason": reason}
        )

    def end_maintenance(self, name):
        """``DELETE /boards/NAME/maintenance``: back in service (admins)."""
        return self.call("DELETE", f"/boards/{segment(name)}/maintenance")

    def queue(self):
        """``GET /queue``: the waiters, yours in full and the others counted."""
        return self.call("GET", "/queue")

    def cancel_waiter(self, waiter):
        """``DELETE /queue/ID``: leave the queue (your waiter, or anyone's: admins)."""
        return self.call("DELETE", f"/queue/{segment(str(waiter))}")

    def set_attrs(self, name, values):
        """``POST /boards/NAME/attrs``: change power or timeout; the board after."""
        return self.call("POST", f"/boards/{segment(name)}/attrs", values)


#: the server-sent event stream of what concerns the caller
EVENTS_PATH = "/events/stream"


def console_path(name, follow=False, reservation=None):
    """The path of ``GET /boards/NAME/console`` with its query."""
    query = {}
    if follow:
        query["follow"] = "1"
    if reservation is not None:
        query["reservation"] = reservation
    path = f"/boards/{segment(name)}/console"
    return path + ("?" + urlencode(query) if query else "")
