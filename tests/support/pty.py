"""Pseudo-terminals standing in for boards' serial ports.

The server opens the slave side (``PtyBoard.path``) as its serial device;
the test plays the board on the master side.
"""

import errno
import fcntl
import os
import termios
import tty


class PtyBoard:
    """A pty pair in raw mode; the master is the board's end.

    The slave file descriptor is closed at once: the server opens the slave
    by path, and a slave left open here would keep the pty alive after the
    server closed it.
    """

    def __init__(self):
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        tty.setraw(self.master, termios.TCSANOW)
        tty.setraw(slave, termios.TCSANOW)
        os.close(slave)
        flags = fcntl.fcntl(self.master, fcntl.F_GETFL)
        fcntl.fcntl(self.master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.received = bytearray()
        self._unsent = b""

    def print(self, data):
        """Print ``data`` as the board; True once all printed so far is sent.

        What the pty cannot take now is kept and sent by later calls of
        ``print`` or ``flush``: the reactor must run to read the other end,
        so poll ``flush`` (with a timeout) after printing much.
        """
        self._unsent += data
        return self.flush()

    def flush(self):
        """Send what is left of earlier ``print`` calls; True when none is."""
        while self._unsent:
            try:
                sent = os.write(self.master, self._unsent)
            except BlockingIOError:
                return False
            self._unsent = self._unsent[sent:]
        return True

    def read(self):
        """Collect what the server sent to the board so far (non-blocking)."""
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EIO:
                    break
                raise
            if not chunk:
                break
            self.received += chunk
        return bytes(self.received)

    def unplug(self):
        """Close the board's end, as when a USB serial adapter is pulled."""
        if self.master is not None:
            os.close(self.master)
            self.master = None

    close = unplug
