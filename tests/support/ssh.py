"""The system OpenSSH client through ``bitelab contssh``, against a ``LabServer``."""

import os
import subprocess
import sys

#: the CLI installed beside this Python
BITELAB = os.path.join(os.path.dirname(sys.executable), "bitelab")


def ssh_argv(server, user, login, known_hosts, *extra):
    """argv of ``ssh`` logging in as ``login`` with ``user``'s key; an
    ``extra`` of "strict" asks for strict host key checking."""
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        f"ProxyCommand {BITELAB} contssh",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        (
            "StrictHostKeyChecking=accept-new"
            if not extra or extra[0] != "strict"
            else "StrictHostKeyChecking=yes"
        ),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-i",
        server.key(user),
        "-l",
        login,
        *[e for e in extra if e != "strict"],
        "bitelab",
    ]


def run_ssh(server, user, login, known_hosts, *extra, token="", stdin=b""):
    """Run ``ssh_argv`` to the end; the CompletedProcess."""
    return subprocess.run(
        ssh_argv(server, user, login, known_hosts, *extra),
        input=stdin,
        capture_output=True,
        env=server.client_env(token),
        timeout=60,
        check=False,
    )
