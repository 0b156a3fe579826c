"""The Linux jail script driven by a real server: reserve, ssh into the jail, release."""

import os
import shlex

import pytest

from support import jail

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="jails need root"),
]


@pytest.fixture
def site():
    """A jail-script site private to the test, cleaned by force afterwards."""
    with jail.jail_site() as s:
        yield s


@pytest.fixture
def link():
    """A veth pair standing in for the board's VLAN interface."""
    with jail.board_link() as s:
        yield s


def wrapper(site, directory):
    """A site wrapper, as docs/jails.rst suggests: settings, then the shipped script."""
    settings = site.env("unused")
    lines = ["#!/bin/sh"]
    for key, value in settings.items():
        if key.startswith("BITELAB_JAIL_"):
            lines.append(f"export {key}={shlex.quote(value)}")
    lines.append(f'exec {shlex.quote(str(jail.SCRIPT))} "$@"')
    path = directory / "site-jail.sh"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def test_reserve_ssh_into_jail_release(lab_server, site, link, tmp_path):
    """A user reserves, logs into the printed address with their key and finds the
    board's interface; another user's key is refused; release leaves the host clean."""
    script = wrapper(site, tmp_path)
    server = lab_server(
        boards=f"setup_script = {script};\nclasses {{ a64 {{ arch = arm64-aarch64; }} }}\n"
        f"boards [ {{ name = j1; brdclass = a64; options = [ "
        f'{{ cls = etheriface, val = "{link.name}" }} ] }} ]'
    )
    alice_key = jail.make_key(tmp_path, "alice")
    bob_key = jail.make_key(tmp_path, "bob")
    alice = server.token("alice")
    pub = (tmp_path / "alice.pub").read_text().strip()
    status, board = server.request(
        "POST", "/api/v1/boards/j1/reserve", {"sshpubkey": pub}, alice
    )
    assert status == 200, board
    attributes = board["attrs"]
    assert {"ip", "ssh_port", "ssh_user"} <= set(attributes)
    assert link.name not in jail.link_names()

    result = jail.ssh(attributes, alice_key, "ip -o link; id -u")
    assert result.returncode == 0, result.stderr
    assert link.name in result.stdout
    assert result.stdout.split()[-1] != "0"

    refused = jail.ssh(attributes, bob_key, "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr

    status, board = server.request("POST", "/api/v1/boards/j1/release", {}, alice)
    assert status == 200 and board["state"] == "free"
    assert "ip" not in board["attrs"]
    assert site.leftovers() == []
    assert link.name in jail.link_names()
    assert jail.link_is_up(link.name)
