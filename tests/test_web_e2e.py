"""The web UI's sign-in and console WebSocket over TLS, against a real
``twistd`` on an ``ssl:`` endpoint whose board's console is a pty, with a
plain WebSocket client (``websocket-client``)."""

import ssl
import urllib.request

import pytest
import websocket

from support.pty import PtyBoard
from support.server import wait_for

pytestmark = pytest.mark.e2e

BOARDS = (
    "classes {{ z {{ arch = arm; }} }}\nboards [ {{ name = con-1; brdclass = z; "
    'options = [ {{ cls = serialconsole, val = "{device}" }} ] }} ]\n'
)


def sign_in(server, token, context):
    """The session cookie (``name=value``) of signing in with ``token``."""
    page = urllib.request.urlopen(server.url + "/login", context=context)
    check = page.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    request = urllib.request.Request(
        server.url + "/login",
        method="POST",
        data=b"",
        headers={
            "Authorization": f"Bearer {token}",
            "X-Login-CSRF": check,
            "Cookie": f"bitelab_login={check}",
        },
    )
    answer = urllib.request.urlopen(request, context=context)
    cookie = answer.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie
    return cookie.split(";")[0]


def test_console_socket_over_tls(lab_server):
    """Over TLS the session cookie is Secure and the console WebSocket works
    both ways; the server's log stays free of per-frame lines."""
    board = PtyBoard()
    try:
        server = lab_server(boards=BOARDS.format(device=board.path), tls=True)
        token = server.token("alice")
        status, _ = server.request("POST", "/api/v1/boards/con-1/reserve", {}, token)
        assert status == 200
        context = ssl._create_unverified_context()
        cookie = sign_in(server, token, context)
        socket = websocket.create_connection(
            server.url.replace("https:", "wss:") + "/ws/console/con-1",
            header=[f"Cookie: {cookie}"],
            origin=server.url,
            sslopt={"cert_reqs": ssl.CERT_NONE},
            timeout=30,
        )
        try:
            assert '"attached"' in socket.recv()
            assert socket.recv().startswith(b"=== bitelab: reserved by alice")
            board.print(b"over TLS\r\n")
            assert socket.recv() == b"over TLS\r\n"
            for key in b"ls\r":
                socket.send_binary(bytes([key]))
            wait_for(lambda: b"ls\r" in board.read(), what="keystrokes at the pty")
        finally:
            socket.close()
        assert "Traceback" not in server.log()
        assert "ConsoleSocket#debug" not in server.log()
    finally:
        board.close()
