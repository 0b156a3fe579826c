"""conf/jail-linux.sh, run as the server runs it, with real namespaces and sshd.

Each test builds its own site (names, pool, directories) and a veth pair that
plays the board's VLAN interface; traffic only goes to namespaces made here.
The board stand-ins use busybox (udhcpc, tftp); the jails run dnsmasq and
tcpdump from Debian.
"""

import os
import secrets
import subprocess
import sys
import time

import pytest

from support import jail as support
from support.jail import (
    BOARD_JAIL_ADDR,
    BOARD_PEER_ADDR,
    SCRIPT,
    SSH_OPTIONS,
    link_is_up,
    link_names,
    make_key,
    netns_names,
    parse_attrs,
    processes_mentioning,
    ssh,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="jails need root (namespaces, accounts, sshd)"
)
# Root over the jail's network needs unprivileged user namespaces.
USERNS = os.geteuid() == 0 and support.user_namespaces_allowed()
needs_userns = pytest.mark.skipif(
    not USERNS, reason="the kernel does not allow unprivileged user namespaces"
)

BOARD_SERVICE = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777))
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello from the board\\n")
    c.close()
"""


def reserve(site, board, link=None, key=None, **extra):
    """Reserve ``board`` successfully and return the attributes printed."""
    if link is not None:
        extra.setdefault("BITELAB_ETHERIFACE", link.name)
    if key is not None:
        extra.setdefault(
            "BITELAB_SSHPUBKEY", key.with_suffix(".pub").read_text().strip()
        )
    result = site.run("reserve", board, **extra)
    assert result.returncode == 0, result.stderr
    return parse_attrs(result.stdout)


def assert_released(site, board, link=None):
    """Nothing of ``board``'s jail is left, and the board interface is home."""
    assert site.leftovers(board) == []
    if link is not None:
        assert link.name in link_names()
        assert link_is_up(link.name)


@pytest.fixture
def jail_site():
    """A site of the jail script private to the test."""
    with support.jail_site() as site:
        yield site


@pytest.fixture
def board_link():
    """A stand-in for the board's VLAN interface."""
    with support.board_link() as link:
        yield link


@pytest.fixture
def board_service(board_link):
    """A TCP service on the board's side of the link, answering one line."""
    process = subprocess.Popen(
        ["ip", "netns", "exec", board_link.board_netns, sys.executable, "-c"]
        + [BOARD_SERVICE, BOARD_PEER_ADDR],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        yield board_link
    finally:
        process.kill()
        process.wait()


def test_reserve_login_release(jail_site, board_service, tmp_path):
    """A reserved jail prints where to log in; the holder's key gets a shell
    there as an unprivileged account that sees the board's interface and
    reaches the board; release removes it all and gives the interface back."""
    link = board_service
    key = make_key(tmp_path, "holder")
    attrs = reserve(
        jail_site, "cora-1", link, key, BITELAB_JAIL_IFACE_ADDR=BOARD_JAIL_ADDR
    )

    account = jail_site.name("cora-1")
    assert attrs["ssh_user"] == account
    assert attrs["ssh_port"] == "22"
    assert attrs["ip"].startswith(jail_site.pool.rsplit(".", 1)[0] + ".")
    assert attrs["ssh_hostkey"].startswith("SHA256:")
    assert attrs["net_admin"] == ("yes" if USERNS else "no")
    assert attrs["iface"] == link.name
    assert account in netns_names()
    assert link.name not in link_names()

    result = ssh(
        attrs,
        key,
        "id -un; id -u; ip -o link; "
        f"exec 3<>/dev/tcp/{BOARD_PEER_ADDR}/7777 && head -n 1 <&3",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == account
    assert int(lines[1]) != 0
    board_lines = [ln for ln in lines if f" {link.name}@" in ln]
    assert len(board_lines) == 1 and ",UP," in board_lines[0]
    assert lines[-1] == "hello from the board"

    for _ in range(2):
        release = jail_site.run("release", "cora-1")
        assert release.returncode == 0, release.stderr
        assert release.stdout == ""
        assert_released(jail_site, "cora-1", link)


def test_jail_sees_the_host_read_only(jail_site, board_link, tmp_path):
    """Inside the jail the host's files are read-only, without set-user-ID
    programs, and its secrets unreadable; home, /tmp, /var/tmp, /dev/shm and /run/lock are the jail's
    own; host processes, interfaces, the hostname and kernel settings are out
    of reach."""
    key = make_key(tmp_path, "holder")
    attrs = reserve(jail_site, "a64lts-1", board_link, key)
    host_key = jail_site.state_dir / "ssh_host_ed25519_key"
    marker = f"/tmp/bitelab-host-only-{jail_site.tag}"
    open(marker, "w").close()
    marker_name = f"bitelab-jail-only-{jail_site.tag}"
    veth_host = f"{jail_site.veth_prefix}h0"
    try:
        script = (
            f"cat {host_key} && echo KEY-READ; "
            "cat /etc/shadow && echo SHADOW-READ; "
            f"touch /etc/bitelab-{jail_site.tag} && echo ETC-WRITTEN; "
            f"touch {jail_site.base}/x && echo STATE-WRITTEN; "
            f"test -e /proc/{os.getpid()} && echo SEES-HOST-PROCESS; "
            f"test -e {marker} && echo SEES-HOST-TMP; "
            f"ip link show dev {veth_host} && echo SEES-HOST-LINK; "
            "echo 3 > /proc/sys/vm/drop_caches && echo DROPPED-CACHES; "
            "hostname other && echo RENAMED; "
            "for d in ~ /tmp /var/tmp /dev/shm /run/lock; do"
            f"  touch $d/{marker_name} && echo WROTE-$d; done; "
            "hostname; "
            "python3 -c 'import os; print(*(os.statvfs(d).f_flag & 3"
            ' for d in ("/", "/usr/bin", "/dev")))\''
        )
        result = ssh(attrs, key, script)
    finally:
        os.unlink(marker)
    assert result.returncode == 0, result.stderr
    home = jail_site.home_dir / jail_site.name("a64lts-1")
    assert result.stdout.split() == [
        f"WROTE-{home}",
        "WROTE-/tmp",
        "WROTE-/var/tmp",
        "WROTE-/dev/shm",
        "WROTE-/run/lock",
        jail_site.name("a64lts-1"),
        # read-only and no set-user-ID programs: ST_RDONLY | ST_NOSUID
        "3",
        "3",
        "3",
    ]
    assert result.stderr.count("Permission denied") == 3, result.stderr
    assert result.stderr.count("Read-only file system") == 2, result.stderr
    assert "does not exist" in result.stderr
    assert not os.path.exists(f"/etc/bitelab-{jail_site.tag}")
    for private in ("/var/tmp", "/dev/shm", "/run/lock"):
        assert not os.path.exists(f"{private}/{marker_name}")


def test_jail_without_network_admin(jail_site, board_link, tmp_path):
    """With BITELAB_JAIL_NET_ADMIN=no the account may use the board's
    interface and serve on low ports, but not reconfigure the network."""
    key = make_key(tmp_path, "holder")
    attrs = reserve(jail_site, "a64lts-2", board_link, key, BITELAB_JAIL_NET_ADMIN="no")
    assert attrs["net_admin"] == "no"
    script = (
        f"ip link set dev {board_link.name} down && echo LINK-CHANGED; "
        "test -e /run/bitelab/userns && echo HAS-USERNS; "
        "python3 -c 'import socket; socket.socket().bind((\"0.0.0.0\", 80))'"
        " && echo BOUND-80"
    )
    result = ssh(attrs, key, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["BOUND-80"]
    assert "Operation not permitted" in result.stderr
    assert link_is_up(board_link.name, netns=jail_site.name("a64lts-2"))


def test_other_keys_and_accounts_are_refused(jail_site, board_link, tmp_path):
    """Only the key given at reserve logs in, and only as the jail account."""
    key = make_key(tmp_path, "holder")
    other = make_key(tmp_path, "someone-else")
    attrs = reserve(jail_site, "cora-2", board_link, key)

    refused = ssh(attrs, other, "true")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    as_root = ssh(attrs, key, "true", user="root")
    assert as_root.returncode == 255
    assert "Permission denied" in as_root.stderr
    assert ssh(attrs, key, "true").returncode == 0


def test_jails_get_distinct_addresses(jail_site, tmp_path):
    """Boards reserved at the same time get different addresses, each with a
    working sshd, and releasing one leaves the other alone."""
    key = make_key(tmp_path, "holder")
    boards = ["b-1", "b-2", "b-3"]
    procs = {
        b: subprocess.Popen(
            [str(SCRIPT), "reserve", b],
            env=jail_site.env(
                b, BITELAB_SSHPUBKEY=key.with_suffix(".pub").read_text().strip()
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in boards
    }
    attrs = {}
    for board, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        attrs[board] = parse_attrs(out)
    assert len({a["ip"] for a in attrs.values()}) == len(boards)
    for board in boards:
        result = ssh(attrs[board], key, "id -un")
        assert result.stdout.strip() == jail_site.name(board), result.stderr

    assert jail_site.run("release", "b-2").returncode == 0
    assert_released(jail_site, "b-2")
    assert ssh(attrs["b-1"], key, "true").returncode == 0
    assert jail_site.name("b-3") in netns_names()


def test_failed_reserve_leaves_host_clean(jail_site, board_link, tmp_path):
    """A reserve failing late (sshd will not run) undoes everything, says why
    in one line, and a release afterwards still succeeds."""
    key = make_key(tmp_path, "holder")
    result = jail_site.run(
        "reserve",
        "cora-3",
        BITELAB_ETHERIFACE=board_link.name,
        BITELAB_SSHPUBKEY=key.with_suffix(".pub").read_text().strip(),
        BITELAB_JAIL_SSHD="/bin/false",
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        (
            "bitelab-jail: cannot check the jail's sshd configuration: "
            "/bin/false exited with status 1"
        )
    ]
    assert_released(jail_site, "cora-3", board_link)

    release = jail_site.run("release", "cora-3")
    assert release.returncode == 0, release.stderr
    assert_released(jail_site, "cora-3", board_link)


def test_release_after_killed_reserve(jail_site, board_link, tmp_path):
    """A reserve killed half-way (as on a time-out) leaves a half-built jail;
    release removes it and hands the interface back, and a second release
    finds nothing to do."""
    hang = tmp_path / "sshd-that-hangs"
    started = tmp_path / "sshd-started"
    hang.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    hang.chmod(0o755)
    proc = jail_site.start(
        "reserve",
        "cora-4",
        BITELAB_ETHERIFACE=board_link.name,
        BITELAB_JAIL_SSHD=str(hang),
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "reserve never reached sshd"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    name = jail_site.name("cora-4")
    assert name in netns_names()
    assert board_link.name in link_names(netns=name)

    for _ in range(2):
        release = jail_site.run("release", "cora-4")
        assert release.returncode == 0, release.stderr
        assert_released(jail_site, "cora-4", board_link)


def test_reserve_interrupted_by_timeout(jail_site, board_link, tmp_path):
    """The server's SIGTERM on time-out stops a reserve stuck in a command:
    it cleans up at once and says it was interrupted."""
    hang = tmp_path / "sshd-that-hangs"
    started = tmp_path / "sshd-started"
    hang.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    hang.chmod(0o755)
    proc = subprocess.Popen(
        [str(SCRIPT), "reserve", "cora-7"],
        env=jail_site.env(
            "cora-7", BITELAB_ETHERIFACE=board_link.name, BITELAB_JAIL_SSHD=str(hang)
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "reserve never reached sshd"
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode != 0
    assert out == ""
    assert err.splitlines()[-1] == (
        "bitelab-jail: reserve of cora-7 interrupted (timed out?)"
    )
    assert_released(jail_site, "cora-7", board_link)


def test_reserve_cleans_stale_jail(jail_site, board_link, tmp_path):
    """Reserving a board whose last jail was never released replaces it."""
    key = make_key(tmp_path, "holder")
    first = reserve(jail_site, "cora-5", board_link, key)
    second = reserve(jail_site, "cora-5", board_link, key)
    assert ssh(second, key, "true").returncode == 0
    assert len(processes_mentioning(str(jail_site.state_dir))) == 1
    assert first["ssh_user"] == second["ssh_user"]


@pytest.mark.parametrize("board", ["", "../etc", "a b", "x;id", "ünï", "a" * 40])
def test_bad_board_name(jail_site, board):
    """A board name unfit for names and paths fails in one line, touching
    nothing."""
    result = jail_site.run("reserve", board)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("bitelab-jail: ")
    assert "board name" in result.stderr
    assert jail_site.leftovers() == []
    assert not jail_site.state_dir.exists()


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"BITELAB_ETHERIFACE": "tbnone.103"}, "interface tbnone.103"),
        ({"BITELAB_SSHPUBKEY": "not a key"}, "not an OpenSSH public key"),
        ({"BITELAB_JAIL_POOL": "10.0.0.0"}, "BITELAB_JAIL_POOL"),
        ({"BITELAB_JAIL_MEMORY_MAX": "lots"}, "BITELAB_JAIL_MEMORY_MAX lots"),
        ({"BITELAB_JAIL_PIDS_MAX": "0"}, "BITELAB_JAIL_PIDS_MAX 0"),
        ({"BITELAB_JAIL_CPU_WEIGHT": "20000"}, "BITELAB_JAIL_CPU_WEIGHT 20000"),
        ({"BITELAB_JAIL_NET_ADMIN": "maybe"}, "BITELAB_JAIL_NET_ADMIN maybe"),
        ({"BITELAB_JAIL_UIDS": "5-1"}, "BITELAB_JAIL_UIDS 5-1"),
        ({"BITELAB_JAIL_CGROUP": "../x"}, "BITELAB_JAIL_CGROUP ../x"),
    ],
)
def test_bad_reserve_input(jail_site, extra, reason):
    """Bad input from the board file, the user or the site fails in one line
    that names the problem, and leaves nothing behind."""
    result = jail_site.run("reserve", "cora-6", **extra)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert reason in result.stderr
    assert jail_site.leftovers() == []


def test_pool_exhausted(jail_site, tmp_path):
    """With every address of the pool in use, reserve says so and cleans up."""
    small = jail_site.pool.rsplit(".", 1)[0] + ".0/30"
    assert jail_site.run("reserve", "one", BITELAB_JAIL_POOL=small).returncode == 0
    result = jail_site.run("reserve", "two", BITELAB_JAIL_POOL=small)
    assert result.returncode != 0
    assert "no free address" in result.stderr.splitlines()[-1]
    assert jail_site.leftovers("two") == []
    assert jail_site.run("release", "one", BITELAB_JAIL_POOL=small).returncode == 0
    assert jail_site.leftovers() == []


def test_reserve_without_key(jail_site, board_link, tmp_path):
    """With no key given the jail is still built (the board's interface is
    the user's to use later), but nobody can log in to it."""
    attrs = reserve(jail_site, "cora-8", board_link)
    assert attrs["ssh_user"] == jail_site.name("cora-8")
    refused = ssh(attrs, make_key(tmp_path, "anyone"), "true")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    assert jail_site.run("release", "cora-8").returncode == 0
    assert_released(jail_site, "cora-8", board_link)


def test_release_ends_sessions_and_jobs(jail_site, board_link, tmp_path):
    """Release succeeds while the holder is logged in with jobs left running,
    and ends both."""
    key = make_key(tmp_path, "holder")
    attrs = reserve(jail_site, "cora-9", board_link, key)
    job = f"sleep {3000 + secrets.randbelow(1000)}"
    left = ssh(attrs, key, f"nohup {job} >/dev/null 2>&1 &")
    assert left.returncode == 0, left.stderr
    session = subprocess.Popen(
        ["ssh", *SSH_OPTIONS, "-i", str(key), "-p", attrs["ssh_port"]]
        + [f"{attrs['ssh_user']}@{attrs['ip']}", "echo in; exec sleep 600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert session.stdout.readline() == "in\n"
        assert processes_mentioning(job)
        release = jail_site.run("release", "cora-9")
        assert release.returncode == 0, release.stderr
        assert session.wait(timeout=10) != 0
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert processes_mentioning(job) == []
    assert_released(jail_site, "cora-9", board_link)


UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc runs this with the lease in its environment.
case $1 in
bound | renew)
    ip addr add "$ip/$mask" dev "$interface"
    echo "$ip $siaddr $boot_file" >{lease}
    ;;
esac
"""


@needs_userns
def test_jail_root_netboots_the_board(jail_site, board_link, tmp_path):
    """Inside the jail the account is root over the board's network: it
    addresses the interface, adds a route, captures packets with tcpdump
    and runs dnsmasq's DHCP and TFTP servers, from which the board stand-in
    gets a lease and its boot file.  That root still gets no host files,
    interfaces or hostname."""
    key = make_key(tmp_path, "holder")
    attrs = reserve(jail_site, "cora-10", board_link, key)
    iface = board_link.name
    image = f"boot image {secrets.token_hex(8)}"
    # The board starts without an address, as a netbooting board does.
    subprocess.run(
        ["ip", "-n", board_link.board_netns, "addr", "flush", "dev", board_link.peer],
        check=True,
    )
    setup = f"""set -e
ip addr add 192.0.2.1/24 dev {iface}
ip route add 198.51.100.0/24 via 192.0.2.2 dev {iface}
mkdir ~/tftp
echo '{image}' >~/tftp/boot.img
setsid tcpdump -i {iface} -n --immediate-mode -U -w ~/capture.pcap </dev/null >/dev/null 2>~/tcpdump.log &
echo $! >~/tcpdump.pid
setsid nsenter --user=/run/bitelab/userns /usr/sbin/dnsmasq --no-daemon \\
    -u root --conf-file=/dev/null --port=0 --interface={iface} --bind-interfaces \\
    --no-ping --dhcp-range=192.0.2.100,192.0.2.150,255.255.255.0,1h \\
    --dhcp-boot=boot.img --dhcp-leasefile=$HOME/leases --enable-tftp \\
    --tftp-root=$HOME/tftp \\
    </dev/null >/dev/null 2>~/dnsmasq.log &
for i in $(seq 100); do
    grep -q listening ~/tcpdump.log && grep -q "TFTP root" ~/dnsmasq.log && break
    sleep 0.1
done
grep -q listening ~/tcpdump.log || {{ cat ~/tcpdump.log >&2; exit 1; }}
grep -q "TFTP root" ~/dnsmasq.log || {{ cat ~/dnsmasq.log >&2; exit 1; }}
ip route show dev {iface}
"""
    started = ssh(attrs, key, setup)
    assert started.returncode == 0, started.stderr
    assert "198.51.100.0/24 via 192.0.2.2" in started.stdout

    lease = tmp_path / "lease"
    client = tmp_path / "udhcpc.sh"
    client.write_text(UDHCPC_SCRIPT.format(lease=lease))
    client.chmod(0o755)
    on_board = ["ip", "netns", "exec", board_link.board_netns, "busybox"]
    dhcp = subprocess.run(
        on_board
        + ["udhcpc", "-i", board_link.peer, "-n", "-q", "-f", "-t", "10", "-T", "1"]
        + ["-s", str(client)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dhcp.returncode == 0, dhcp.stderr
    address, server, boot_file = lease.read_text().split()
    assert address.startswith("192.0.2.") and 100 <= int(address.split(".")[3]) <= 150
    assert (server, boot_file) == ("192.0.2.1", "boot.img")
    fetched = tmp_path / "fetched.img"
    tftp = subprocess.run(
        on_board + ["tftp", "-g", "-r", boot_file, "-l", str(fetched), server],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert tftp.returncode == 0, tftp.stderr
    assert fetched.read_text() == image + "\n"

    captured = ssh(
        attrs,
        key,
        "kill $(cat ~/tcpdump.pid); while kill -0 $(cat ~/tcpdump.pid); do sleep 0.1;"
        " done 2>/dev/null; tcpdump -n -r ~/capture.pcap",
    )
    assert captured.returncode == 0, captured.stderr
    assert "BOOTP/DHCP, Request" in captured.stdout
    assert "BOOTP/DHCP, Reply" in captured.stdout
    assert 'RRQ "boot.img"' in captured.stdout

    # Root of the jail's network, and nothing more.
    denied = ssh(
        attrs,
        key,
        "nsenter --user=/run/bitelab/userns sh -c '"
        "id -u; cat /etc/shadow; touch /etc/bitelab-jail-root;"
        f" ip link show dev {jail_site.veth_prefix}h0; hostname other'",
    )
    assert denied.stdout.split() == ["0"]
    assert "/etc/shadow: Permission denied" in denied.stderr
    assert "Read-only file system" in denied.stderr
    assert "does not exist" in denied.stderr
    assert "must be root" in denied.stderr


def cgroup_values(site, board, *names):
    """The first of the files ``names`` found in ``board``'s cgroups, read."""
    for path in site.cgroups(board):
        for name in names:
            if (path / name).exists():
                return (path / name).read_text()
    raise AssertionError(f"no {' or '.join(names)} in {site.cgroups(board)}")


def test_jail_limits(jail_site, tmp_path):
    """The jail's cgroups carry the site's limits: a process allocating more
    memory than the jail may have is killed while the jail carries on, and
    forks beyond the process limit fail."""
    key = make_key(tmp_path, "holder")
    attrs = reserve(
        jail_site,
        "cora-11",
        key=key,
        BITELAB_JAIL_MEMORY_MAX="64M",
        BITELAB_JAIL_PIDS_MAX="40",
        BITELAB_JAIL_CPU_WEIGHT="50",
    )
    missing = {"memory", "pids"} - support.jail_controllers()
    if missing:
        pytest.skip(f"the host's cgroups give jails no {', '.join(sorted(missing))}")
    memory = cgroup_values(jail_site, "cora-11", "memory.max", "memory.limit_in_bytes")
    assert int(memory) == 64 << 20
    assert cgroup_values(jail_site, "cora-11", "pids.max").strip() == "40"
    weight = cgroup_values(jail_site, "cora-11", "cpu.weight", "cpu.shares")
    assert int(weight) in (50, 512)

    hog = ssh(attrs, key, "python3 -c 'b = bytearray(256 << 20)'; echo status=$?")
    assert "status=137" in hog.stdout, hog.stderr

    forks = ssh(
        attrs,
        key,
        "python3 -c '"
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 100:\n"
        "        if os.fork() == 0:\n"
        "            os.close(1)\n"
        "            os.close(2)\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, e.errno)\n"
        "'",
    )
    assert forks.returncode == 0, forks.stderr
    forked, errno = forks.stdout.split()
    assert int(forked) < 40 and int(errno) == 11
    events = cgroup_values(jail_site, "cora-11", "pids.events")
    assert int(events.split()[events.split().index("max") + 1]) > 0
    assert ssh(attrs, key, "true").returncode == 0


def test_release_without_reserve(jail_site, board_link):
    """Release of a board that never had a jail (a reservation undone before
    its reserve ran) succeeds, again and again, and touches nothing."""
    for _ in range(2):
        release = jail_site.run(
            "release", "cora-12", BITELAB_ETHERIFACE=board_link.name
        )
        assert release.returncode == 0, release.stderr
        assert release.stderr == ""
    assert jail_site.leftovers() == []
    assert link_is_up(board_link.name)


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.2, 0.35, 0.5])
def test_reserve_after_killed_reserve(jail_site, board_link, tmp_path, delay):
    """Wherever a reserve is killed outright (SIGKILL to its process group,
    as the server does after a time-out), the next reserve of the board
    clears the leftovers and builds a working jail, which release removes."""
    key = make_key(tmp_path, "holder")
    pub = key.with_suffix(".pub").read_text().strip()
    proc = jail_site.start(
        "reserve", "cora-13", BITELAB_ETHERIFACE=board_link.name, BITELAB_SSHPUBKEY=pub
    )
    time.sleep(delay)
    os.killpg(proc.pid, 9)
    proc.wait()

    attrs = reserve(jail_site, "cora-13", board_link, key)
    result = ssh(attrs, key, "ip -o link")
    assert result.returncode == 0, result.stderr
    assert f" {board_link.name}@" in result.stdout
    release = jail_site.run("release", "cora-13")
    assert release.returncode == 0, release.stderr
    assert_released(jail_site, "cora-13", board_link)
    assert jail_site.leftovers() == []


def test_release_ends_a_reserve_left_running(jail_site, board_link, tmp_path):
    """A reserve still running for the board (left behind by a server that
    crashed) is ended by the release that undoes it, so it cannot build
    again what release took down."""
    hang = tmp_path / "sshd-that-hangs"
    started = tmp_path / "sshd-started"
    hang.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    hang.chmod(0o755)
    stale = jail_site.start(
        "reserve",
        "cora-14",
        BITELAB_ETHERIFACE=board_link.name,
        BITELAB_JAIL_SSHD=str(hang),
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "reserve never reached sshd"
        release = jail_site.run("release", "cora-14")
        assert release.returncode == 0, release.stderr
        assert stale.poll() is not None
        assert processes_mentioning(str(hang)) == []
    finally:
        if stale.poll() is None:
            os.killpg(stale.pid, 9)
        stale.wait()
    assert_released(jail_site, "cora-14", board_link)
