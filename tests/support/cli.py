"""The ``bitelab`` command of this tree run as a user, and the example lab's
pretend board (``conf/fakeboard.py``) as a board file."""

import os
import subprocess
import sys
from pathlib import Path

from support.server import REPO

#: where this tree's ``bitelab`` command is
BIN = os.path.dirname(sys.executable)


def boards(conf):
    """A board file: con-1 on the fake board's pty, plain-1 without a console."""
    power = f"{conf}/statepower.sh"
    return f"""
classes {{ z {{ arch = arm; }} }}
boards [
    {{ name = con-1; brdclass = z; options = [
        {{ cls = serialconsole, val = "{conf}/state/con-1.tty" }},
        {{ cls = cmdpower, on = ["{power}", "on", con-1],
           off = ["{power}", "off", con-1], status = ["{power}", "status", con-1] }},
    ] }},
    {{ name = plain-1; brdclass = z; options = [] }},
]
"""


class Client:
    """Runs ``bitelab`` of this tree as one user, with a HOME of its own."""

    def __init__(self, home, env):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "HOME": str(self.home),
            "PYTHONPATH": REPO,
            "LANG": "C.UTF-8",
            **env,
        }

    def run(self, *argv, stdin=subprocess.DEVNULL, timeout=60, **env):
        """``bitelab ARGV``; the CompletedProcess (text)."""
        return subprocess.run(
            [os.path.join(BIN, "bitelab"), *argv],
            env={**self.env, **env},
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
