"""README.rst's walk-through, run as written against a copy of the example labs.

Every ``.. code-block:: sh`` of README.rst runs, in order, in one bash with
``set -eo pipefail``, in a copy of the checkout's ``conf/`` whose ports (and,
for the jail demo, names and addresses) are made unique, so that the test
runs beside a lab on the usual ports and beside itself.  Blocks of class
``no-test`` (installing from the network, the test suite itself, zsh) are
left out; blocks of class ``root`` (the jail demo) run only as root, and
blocks of class ``postgresql`` (the two hosts on one PostgreSQL) only where
Debian's PostgreSQL is installed (always under CI).  ``TMPDIR`` is a
directory of the test's own, so that a database the walk-through made in it
is found and stopped if the walk-through fails.
"""

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bitelab.client import cli
from support import pg
from support.jail import JailSite, force_clean
from support.server import REPO, free_port

pytestmark = pytest.mark.e2e

README = Path(REPO) / "README.rst"
#: the ports of the example labs' .env files (9464: the example's metrics;
#: 8090 to 2233: the two hosts of conf/hosts/; 5433: their PostgreSQL)
PORTS = (8080, 2222, 8081, 2223, 8443, 2224, 9464, 8090, 2232, 8091, 2233, 5433)

_BLOCK = re.compile(
    r"^\.\. code-block:: sh\n((?:   :\w+: .*\n)*)\n((?:(?: {4}.*)?\n)+)", re.MULTILINE
)


def readme_blocks(text):
    """``(classes, commands)`` of each ``sh`` code block of ``text``, in order."""
    blocks = []
    for match in _BLOCK.finditer(text):
        options = dict(
            re.match(r"\s*:(\w+):\s*(.*)", line).groups()
            for line in match.group(1).splitlines()
        )
        lines = [line[4:] for line in match.group(2).splitlines()]
        blocks.append((set(options.get("class", "").split()), "\n".join(lines).strip()))
    return blocks


def test_blocks_are_found():
    """The block reader finds the README's blocks, with their classes."""
    blocks = readme_blocks(README.read_text())
    assert len(blocks) > 10
    assert blocks[0] == ({"no-test"}, blocks[0][1])
    assert "pip install" in blocks[0][1]
    assert any("root" in classes for classes, _ in blocks)


class Checkout:
    """A copy of README.rst's world: ``conf/`` with unique ports and names."""

    def __init__(self, directory, with_jail):
        self.dir = Path(directory)
        shutil.copytree(
            Path(REPO) / "conf",
            self.dir / "conf",
            ignore=shutil.ignore_patterns("state", "keys"),
        )
        self.replacements = [
            (re.compile(rf"(?<!\d){port}(?!\d)"), str(free_port())) for port in PORTS
        ]
        self.jail = None
        if with_jail:
            tag = "r" + secrets.token_hex(3)
            base = Path(tempfile.mkdtemp(prefix=f"bitelab-{tag}-", dir="/var/lib"))
            base.chmod(0o755)  # the jail accounts must reach their authorized_keys
            net = f"10.250.{secrets.randbelow(256)}"
            first_uid = 1_900_000_000 + secrets.randbelow(99_000) * 1000
            self.jail = JailSite(
                base=base, tag=tag, pool=f"{net}.0/24", first_uid=first_uid
            )
            self.link = f"{tag}d0.103"
            self.replacements += [
                (re.compile(r"/var/lib/bitelab/jail-demo"), str(base)),
                (re.compile(r"\bjd-"), f"{tag}-"),
                (re.compile(r"=jdv\b"), f"={tag}"),
                (re.compile(r"10\.203\.64\."), f"{net}."),
                (re.compile(r"\bdemo0"), f"{tag}d0"),
                (re.compile(r"bitelab-jail-demo"), self.jail.cgroup),
                (
                    re.compile(r"1800000000-1800999999"),
                    f"{first_uid}-{self.jail.last_uid}",
                ),
            ]
        for path in (self.dir / "conf").rglob("*"):
            if path.name.endswith((".env", ".ucl")) or path.name == "jail-demo.sh":
                path.write_text(self.rewrite(path.read_text()))
        # the walk-through's TMPDIR; the postgres account must reach into it
        self.tmp = Path(tempfile.mkdtemp(prefix="bitelab-readme-"))
        self.tmp.chmod(0o755)

    def rewrite(self, text):
        """``text`` with this copy's ports, names and addresses."""
        for pattern, value in self.replacements:
            text = pattern.sub(value, text)
        return text

    def stop_everything(self):
        """Stop whatever the walk-through left running; its leftovers, as text."""
        left = []
        for pid_file in (self.dir / "conf" / "state").glob("*.pid"):
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                left.append(f"{pid_file.name} (pid {pid})")
            except (ValueError, ProcessLookupError):
                pass
        if self.jail is not None:
            subprocess.run(
                ["ip", "link", "del", self.link], check=False, capture_output=True
            )
            force_clean(self.jail)
        for pid_file in self.tmp.glob("*/data/postmaster.pid"):
            data = pid_file.parent
            as_owner = []
            if os.geteuid() == 0:
                as_owner = ["runuser", "-u", data.owner(), "--"]
            subprocess.run(
                [*as_owner, pg._bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
            left.append(f"PostgreSQL in {data}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return left


def test_readme_walk_through_runs_as_written(tmp_path):
    """Each README command block runs in order and succeeds; together they use
    every ``bitelab`` command, and the last ones stop every server they started."""
    with_jail = (
        os.geteuid() == 0
        and shutil.which("ip") is not None
        and os.path.exists("/usr/sbin/sshd")
    )
    with_postgresql = pg.available()
    if not with_postgresql and os.environ.get("CI"):
        pytest.fail("PostgreSQL is not installed; .ci/run installs it")
    checkout = Checkout(tmp_path / "checkout", with_jail)
    blocks = [
        (classes, checkout.rewrite(text))
        for classes, text in readme_blocks(README.read_text())
        if "no-test" not in classes
        and (with_jail or "root" not in classes)
        and (with_postgresql or "postgresql" not in classes)
    ]
    script = ["set -eo pipefail"]
    for number, (_, text) in enumerate(blocks, 1):
        script += [f"echo '### README block {number}'", text]
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "PYTHONPATH": REPO,
        "LANG": "C.UTF-8",
        "TMPDIR": str(checkout.tmp),
    }
    log = tmp_path / "walk-through.log"
    try:
        with open(log, "w") as out:
            result = subprocess.run(
                ["bash", "-c", "\n".join(script)],
                cwd=checkout.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
            )
        output = log.read_text()
        assert result.returncode == 0, "\n".join(output.splitlines()[-60:])
        deadline = time.monotonic() + 20
        state = checkout.dir / "conf" / "state"
        while list(state.glob("*.pid")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list(state.glob("*.pid")), "the README left servers running"
        assert not list(checkout.tmp.iterdir()), "the README left files in TMPDIR"
    finally:
        left = checkout.stop_everything()
    assert not left
    used = {
        word
        for _, text in blocks
        for word in re.findall(r"\bbitelab (?:--?[\w-]+ (?:\S+ )?)*([a-z]+)", text)
    }
    subparsers = next(
        action
        for action in cli.build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    commands = set(subparsers.choices)
    assert commands - {"contssh"} <= used, commands - used


def test_readme_shows_host1_env_as_shipped():
    """The settings README.rst shows for ``conf/hosts/host1.env`` are that
    file's, so that the two-hosts walk-through runs what the reader reads."""
    text = README.read_text()
    shown = re.search(
        r"``conf/hosts/host1.env``:\n\n\.\. code-block:: ini\n\n((?: {4}.*\n)+)",
        text,
    )
    assert shown, "README.rst no longer shows conf/hosts/host1.env"
    settings = [
        line
        for line in (Path(REPO) / "conf" / "hosts" / "host1.env")
        .read_text()
        .splitlines()
        if line and not line.startswith("#")
    ]
    assert [line[4:] for line in shown.group(1).splitlines()] == settings
