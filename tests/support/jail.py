"""Real namespaces, accounts and sshd for testing the Linux jail script.

``conf/jail-linux.sh`` is run exactly as the server runs it: argv, no shell,
``BITELAB_*`` environment.  Each test gets a ``JailSite`` whose names, address
pool, UID range, cgroup and directories are its own, so tests (and a real
site on the same host) never meet, and ``force_clean`` removes whatever a
broken script left behind.

Context managers, for fixtures of any test that needs a jail:

- ``jail_site()``: a ``JailSite``; cleaned up by force on exit.
- ``board_link()``: a ``BoardLink``, a veth pair standing in for a board's
  VLAN interface; the far end sits in a namespace of its own with an
  address, as the board would.
"""

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import attrs

SCRIPT = Path(__file__).resolve().parents[2] / "conf" / "jail-linux.sh"
SSH_OPTIONS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
    "-o",
    "LogLevel=ERROR",
]
BOARD_PEER_ADDR = "192.0.2.2"
BOARD_JAIL_ADDR = "192.0.2.1/24"


def _run(argv, check=False, **kwargs):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kwargs)


def parse_attrs(stdout):
    """The ``KEY=VALUE`` lines of a script's standard output, as a dict."""
    result = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key] = value
    return result


def netns_names():
    """Names of the host's named network namespaces."""
    out = _run(["ip", "netns", "list"], check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def netns_pids(netns):
    """PIDs of the processes in the namespace ``netns`` (none if it is gone)."""
    result = _run(["ip", "netns", "pids", netns])
    return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []


def link_names(netns=None):
    """Interface names in the host namespace, or in ``netns``."""
    argv = ["ip", "-o", "link", "show"]
    if netns:
        argv[1:1] = ["-n", netns]
    out = _run(argv, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def link_is_up(name, netns=None):
    """Whether interface ``name`` (in the host or ``netns``) is administratively up."""
    argv = ["ip", "-o", "link", "show", "dev", name]
    if netns:
        argv[1:1] = ["-n", netns]
    flags = _run(argv, check=True).stdout.split("<", 1)[1].split(">", 1)[0]
    return "UP" in flags.split(",")


def processes_mentioning(text):
    """(pid, command line) of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline.strip()))
    return found


def processes_of_uids(first, last):
    """(pid, uid, command line) of live processes with any UID in [first, last]."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
        hits = [int(u) for u in uids.split()[1:] if first <= int(u) <= last]
        if hits:
            found.append((int(entry.name), hits[0], cmdline.strip()))
    return found


def cgroup_roots():
    """Mount points of the cgroup2 and version 1 hierarchies jails use."""
    roots = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, kind, options = line.split()[:4]
        controllers = set(options.split(","))
        if kind == "cgroup2" or (
            kind == "cgroup" and controllers & {"memory", "pids", "cpu"}
        ):
            roots.append(Path(mount))
    return roots


def jail_controllers():
    """Controllers jails can have on this host: those the cgroup2 root hands
    down (the jail script asks it to) and those of version 1 hierarchies."""
    found = set()
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, kind, options = line.split()[:4]
        if kind == "cgroup2":
            found |= set((Path(mount) / "cgroup.subtree_control").read_text().split())
        elif kind == "cgroup":
            found |= set(options.split(","))
    return found & {"memory", "pids", "cpu"}


def user_namespaces_allowed():
    """Whether an unprivileged process may make a user namespace here."""
    result = _run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        + ["unshare", "--user", "true"]
    )
    return result.returncode == 0


def kill_cgroup(path):
    """Kill every process in cgroup ``path`` and remove it (and its children)."""
    for child in [p for p in path.iterdir() if p.is_dir()]:
        kill_cgroup(child)
    if (path / "cgroup.kill").exists():
        (path / "cgroup.kill").write_text("1")
    for _ in range(100):
        try:
            pids = (path / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            return
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    try:
        path.rmdir()
    except FileNotFoundError:
        pass


def world_writable_dirs():
    """The host's world-writable directories on its disk and memory file systems."""
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, kind = line.split()[:3]
        if kind in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "f2fs", "zfs"):
            mounts.append(mount.replace("\\040", " "))
    out = _run(
        ["find", *sorted(set(mounts)), "-xdev", "-type", "d", "-perm", "-0002"]
    ).stdout
    return sorted({line for line in out.splitlines() if line})


def accounts_with_prefix(prefix):
    """Names of passwd entries starting with ``prefix``."""
    out = _run(["getent", "passwd"], check=True).stdout
    return [line.split(":")[0] for line in out.splitlines() if line.startswith(prefix)]


def groups_with_prefix(prefix):
    """Names of group entries starting with ``prefix``."""
    out = _run(["getent", "group"], check=True).stdout
    return [line.split(":")[0] for line in out.splitlines() if line.startswith(prefix)]


def make_key(directory, name):
    """A new passphrase-less ed25519 key pair; returns the private key's path."""
    path = Path(directory) / name
    _run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
        check=True,
    )
    return path


def ssh(attributes, key, command, user=None):
    """Run ``command`` in the jail described by reserve's ``attributes``."""
    argv = ["ssh", *SSH_OPTIONS, "-i", str(key), "-p", attributes["ssh_port"]]
    argv += [f"{user or attributes['ssh_user']}@{attributes['ip']}", command]
    return _run(argv, stdin=subprocess.DEVNULL, timeout=30)


@attrs.frozen
class JailSite:
    """A site configuration of the jail script with names unique to one test."""

    base: Path
    tag: str
    pool: str
    first_uid: int

    @property
    def last_uid(self):
        """The last UID of the site's range."""
        return self.first_uid + 999

    @property
    def cgroup(self):
        """The parent of the site's jail cgroups, below each cgroup root."""
        return f"bitelab-{self.tag}"

    def cgroups(self, board=None):
        """Existing cgroups of the site's jails (or of ``board``'s)."""
        found = []
        for root in cgroup_roots():
            parent = root / self.cgroup
            if board is None:
                if parent.is_dir():
                    found += [p for p in parent.iterdir() if p.is_dir()]
            elif (parent / self.name(board)).is_dir():
                found.append(parent / self.name(board))
        return found

    @property
    def prefix(self):
        """Namespace and account prefix."""
        return f"{self.tag}-"

    @property
    def veth_prefix(self):
        """Prefix of the jails' veth names."""
        return self.tag

    @property
    def state_dir(self):
        """The script's state directory."""
        return self.base / "state"

    @property
    def home_dir(self):
        """Where the jail accounts' homes are made."""
        return self.base / "homes"

    def name(self, board):
        """The namespace and account name of ``board``'s jail."""
        return self.prefix + board

    def env(self, board, **extra):
        """The environment the server would pass, plus this site's settings.

        ``extra`` maps variable names to values; ``None`` leaves one out.
        """
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "BITELAB_BOARD": board,
            "BITELAB_CLASS": "test-class",
            "BITELAB_ARCH": "arm64-aarch64",
            "BITELAB_USER": "alice",
            "BITELAB_SSHPUBKEY": "",
            "BITELAB_JAIL_STATE_DIR": str(self.state_dir),
            "BITELAB_JAIL_HOME_DIR": str(self.home_dir),
            "BITELAB_JAIL_PREFIX": self.prefix,
            "BITELAB_JAIL_VETH_PREFIX": self.veth_prefix,
            "BITELAB_JAIL_POOL": self.pool,
            "BITELAB_JAIL_CGROUP": self.cgroup,
            "BITELAB_JAIL_UIDS": f"{self.first_uid}-{self.last_uid}",
        }
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def run(self, action, board, timeout=60, **extra):
        """Run ``jail-linux.sh ACTION BOARD`` as the server does."""
        return _run(
            [str(SCRIPT), action, board],
            env=self.env(board, **extra),
            cwd="/",
            timeout=timeout,
        )

    def start(self, action, board, **extra):
        """Start the script without waiting, in a process group of its own."""
        return subprocess.Popen(
            [str(SCRIPT), action, board],
            env=self.env(board, **extra),
            cwd="/",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def leftovers(self, board=None):
        """Descriptions of anything of this site (or of ``board``) left on the host."""
        prefix = self.name(board) if board else self.prefix
        found = [f"namespace {ns}" for ns in netns_names() if ns.startswith(prefix)]
        found += [f"account {a}" for a in accounts_with_prefix(prefix)]
        found += [f"group {g}" for g in groups_with_prefix(prefix)]
        marker = (
            f"{self.state_dir}/run/{self.name(board)}/" if board else str(self.base)
        )
        found += [f"process {p}: {c}" for p, c in processes_mentioning(marker)]
        if board is None:
            found += [
                f"process {p} of UID {u}: {c}"
                for p, u, c in processes_of_uids(self.first_uid, self.last_uid)
            ]
        found += [f"cgroup {p}" for p in self.cgroups(board)]
        paths = [*self.home_dir.glob("*"), *self.state_dir.glob("run/*")]
        slots = list(self.state_dir.glob("slots/*"))
        if board is None:
            veths = [n for n in link_names() if n.startswith(self.veth_prefix)]
            found += [f"interface {n}" for n in veths]
        else:
            names = {self.name(board), f"{self.name(board)}.err"}
            paths = [p for p in paths if p.name in names]
            slots = [p for p in slots if os.readlink(p) == board]
            found += [f"interface {self.veth_prefix}h{p.name}" for p in slots]
        found += [f"file {p}" for p in paths + slots]
        return found


def make_site():
    """A ``JailSite`` in a fresh directory under /var/lib (not below /tmp,
    which the jails replace by a private tmpfs)."""
    tag = "t" + secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix=f"bitelab-{tag}-", dir="/var/lib"))
    base.chmod(0o755)  # the jail accounts must reach their authorized_keys
    pool = f"10.250.{secrets.randbelow(256)}.{secrets.randbelow(4) * 64}/26"
    first_uid = 1_900_000_000 + secrets.randbelow(99_000) * 1000
    return JailSite(base=base, tag=tag, pool=pool, first_uid=first_uid)


def force_clean(site):
    """Remove everything of ``site`` from the host, whatever state it is in."""
    for root in cgroup_roots():
        if (root / site.cgroup).is_dir():
            kill_cgroup(root / site.cgroup)
    for pid, _, _ in processes_of_uids(site.first_uid, site.last_uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for ns in sorted(n for n in netns_names() if n.startswith(site.prefix)):
        for _ in range(50):
            pids = netns_pids(ns)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        _run(["ip", "netns", "del", ns])
    # A reserve killed in useradd may leave the account files locked until
    # the system reaps it.
    for _ in range(20):
        accounts = accounts_with_prefix(site.prefix)
        groups = groups_with_prefix(site.prefix)
        if not accounts and not groups:
            break
        for account in accounts:
            _run(["userdel", "-r", account])
        for group in groups_with_prefix(site.prefix):
            _run(["groupdel", group])
        time.sleep(0.1)
    for name in link_names():
        if name.startswith(site.veth_prefix):
            _run(["ip", "link", "del", name])
    shutil.rmtree(site.base, ignore_errors=True)


@attrs.frozen
class BoardLink:
    """A veth pair standing in for a board's VLAN interface.

    ``name`` is the host end, handed to the jail as ``BITELAB_ETHERIFACE``;
    its peer lives in ``board_netns`` with address ``BOARD_PEER_ADDR``.
    """

    name: str
    peer: str
    board_netns: str


def make_board_link():
    """Create a ``BoardLink`` with names unique to the caller."""
    tag = secrets.token_hex(2)
    # VLAN-style name, well within the 15 characters of IFNAMSIZ.
    link = BoardLink(
        name=f"tb{tag}.103", peer=f"tb{tag}p", board_netns=f"tb{tag}-board"
    )
    commands = [
        ["ip", "netns", "add", link.board_netns],
        ["ip", "link", "add", link.name, "type", "veth", "peer", "name", link.peer],
        ["ip", "link", "set", link.peer, "netns", link.board_netns],
        [
            "ip",
            "-n",
            link.board_netns,
            "addr",
            "add",
            f"{BOARD_PEER_ADDR}/24",
            "dev",
            link.peer,
        ],
        ["ip", "-n", link.board_netns, "link", "set", link.peer, "up"],
        ["ip", "-n", link.board_netns, "link", "set", "lo", "up"],
        ["ip", "link", "set", link.name, "up"],
    ]
    for argv in commands:
        result = _run(argv)
        if result.returncode:
            remove_board_link(link)
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return link


def remove_board_link(link):
    """Delete the pair, wherever its ends are, and the board's namespace."""
    for pid in netns_pids(link.board_netns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _run(["ip", "link", "del", link.name])
    _run(["ip", "netns", "del", link.board_netns])


@contextlib.contextmanager
def jail_site():
    """A private ``JailSite``, forcibly cleaned on exit."""
    site = make_site()
    try:
        yield site
    finally:
        force_clean(site)


@contextlib.contextmanager
def board_link():
    """A ``BoardLink``, removed on exit."""
    link = make_board_link()
    try:
        yield link
    finally:
        remove_board_link(link)
