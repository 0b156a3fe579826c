"""The web UI's sign-in and console WebSocket over TLS, against a real
``twistd`` on an ``ssl:`` endpoint whose board's console is a pty, with a
plain WebSocket client (``websocket-client``)."""

import ssl

import pytest
import websocket

from support.pty import PtyBoard
from support.server import wait_for
from support.web import sign_in

pytestmark = pytest.mark.e2e

BOARDS = (
    "classes {{ z {{ arch = arm; }} }}\nboards [ {{ name = con-1; brdclass = z; "
    'options = [ {{ cls = serialconsole, val = "{device}" }} ] }} ]\n'
)


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
