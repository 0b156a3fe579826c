#!/usr/bin/env python3
"""A pretend board on a pseudo-terminal: the example lab's serial console.

    python3 conf/fakeboard.py start [BOARD]   # in the background
    python3 conf/fakeboard.py stop [BOARD]
    python3 conf/fakeboard.py run [BOARD]     # in the foreground

BOARD is cora-1 unless given.  The server opens ``state/BOARD.tty`` beside
this script (a link to the pty) as the board's serial device.  The board
follows its power, as ``statepower.sh`` keeps it in ``state/power/BOARD``:
switched on, it prints a boot log and a shell prompt, echoes what it is
sent and answers ``help``, ``version``, ``uptime``, ``echo TEXT`` and
``reboot``; switched off, it is silent.  ``start`` returns once the pty is
there.  Standard library only.
"""

import errno
import os
import select
import signal
import sys
import termios
import time
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
STATE = os.path.join(HERE, "state")
POLL = 0.2


def paths(board):
    """``(tty link, pid file, power state file)`` of ``board``."""
    power_dir = os.environ.get("BITELAB_STATEPOWER_DIR") or os.path.join(STATE, "power")
    return (
        os.path.join(STATE, f"{board}.tty"),
        os.path.join(STATE, f"fakeboard-{board}.pid"),
        os.path.join(power_dir, board),
    )


class Board:
    """The board's side of the pty: its power, its shell, its output."""

    def __init__(self, name, master, power_file):
        self.name = name
        self.master = master
        self.power_file = power_file
        self.on = False
        self.booted_at = 0.0
        self.line = b""

    def power(self):
        """The power state in the state file: True for on."""
        try:
            with open(self.power_file) as f:
                return f.read().strip() == "on"
        except FileNotFoundError:
            return False

    def say(self, text):
        """Print ``text``; what the pty cannot take is lost, as on a real UART."""
        data = text.encode().replace(b"\n", b"\r\n")
        try:
            os.write(self.master, data)
        except BlockingIOError:
            pass

    def boot(self):
        """Print the boot log and the first prompt."""
        self.booted_at = time.monotonic()
        self.line = b""
        self.say(
            f"\nU-Boot 2024.01 ({self.name})\nDRAM:  512 MiB\n"
            "Starting kernel ...\n\n"
            f"fakeboard 1.0 ({self.name}): type help\n{self.prompt()}"
        )

    def prompt(self):
        """The shell prompt."""
        return f"{self.name}# "

    def check_power(self):
        """Follow the state file: boot when it turns on."""
        on = self.power()
        if on and not self.on:
            self.boot()
        self.on = on

    def typed(self, data):
        """Handle input from the console: echo, edit the line, run it."""
        if not self.on:
            return
        for byte in data:
            char = bytes([byte])
            if char in (b"\r", b"\n"):
                self.say("\n")
                self.run(self.line.decode(errors="replace").strip())
                self.line = b""
            elif char in (b"\x7f", b"\b"):
                if self.line:
                    self.line = self.line[:-1]
                    self.say("\b \b")
            elif char == b"\x03":
                self.line = b""
                self.say(f"^C\n{self.prompt()}")
            elif byte >= 32:
                self.line += char
                self.say(char.decode(errors="replace"))

    def run(self, command):
        """Answer one command line, then prompt again."""
        word, _, rest = command.partition(" ")
        if word == "reboot":
            self.boot()
            return
        answers = {
            "": "",
            "help": "commands: help, version, uptime, echo TEXT, reboot\n",
            "version": f"fakeboard 1.0 ({self.name})\n",
            "uptime": f"up {int(time.monotonic() - self.booted_at)} seconds\n",
            "echo": rest + "\n",
        }
        self.say(answers.get(word, f"sh: {word}: not found\n") + self.prompt())


def open_pty(link):
    """A raw pty whose slave ``link`` points to; ``(master, slave)``.

    The slave stays open here too, so that the server closing and opening
    it again does not hang the pty up.
    """
    master, slave = os.openpty()
    for fd in (master, slave):
        tty.setraw(fd, termios.TCSANOW)
    os.set_blocking(master, False)
    temp = f"{link}.{os.getpid()}"
    os.symlink(os.ttyname(slave), temp)
    os.replace(temp, link)
    return master, slave


def serve(board):
    """Run ``board`` until SIGTERM or SIGINT."""
    link, pid_file, power_file = paths(board)
    os.makedirs(STATE, exist_ok=True)
    master, _slave = open_pty(link)
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    state = Board(board, master, power_file)
    try:
        while True:
            state.check_power()
            ready, _, _ = select.select([master], [], [], POLL)
            if ready:
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    continue
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    time.sleep(POLL)
                    continue
                state.typed(data)
    except KeyboardInterrupt:
        pass
    finally:
        for path in (link, pid_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def running_pid(pid_file):
    """The pid in ``pid_file`` if that process lives, else None."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def start(board):
    """Run ``board`` in the background; return once its pty is there."""
    link, pid_file, _ = paths(board)
    pid = running_pid(pid_file)
    if pid is not None:
        print(f"fakeboard: {board} already runs (pid {pid}); its console is {link}")
        return 0
    if os.fork():
        deadline = time.monotonic() + 10
        while running_pid(pid_file) is None or not os.path.exists(link):
            if time.monotonic() > deadline:
                print(f"fakeboard: {board} did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(f"fakeboard: {board} runs (pid {running_pid(pid_file)}); console {link}")
        return 0
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    serve(board)
    os._exit(0)


def stop(board):
    """Stop ``board`` if it runs."""
    _, pid_file, _ = paths(board)
    pid = running_pid(pid_file)
    if pid is None:
        print(f"fakeboard: {board} does not run")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while running_pid(pid_file) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"fakeboard: {board} stopped")
    return 0


def main(argv):
    """Command line: ``start|stop|run [BOARD]``."""
    if len(argv) not in (1, 2) or argv[0] not in ("start", "stop", "run"):
        print("usage: fakeboard.py start|stop|run [BOARD]", file=sys.stderr)
        return 2
    board = argv[1] if len(argv) == 2 else "cora-1"
    if argv[0] == "run":
        serve(board)
        return 0
    return {"start": start, "stop": stop}[argv[0]](board)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
