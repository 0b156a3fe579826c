"""How long the Linux jail script takes to build and to take down jails.

Runs ``conf/jail-linux.sh`` as the server does (as root), on a site and a
veth pair of its own, and measures:

* reserve and release of an idle jail with a board interface, repeated;
* release of a jail whose holder left busy processes behind: fork chains
  (the live process keeps changing PID), some in user namespaces of their
  own, and a fork bomb stopped at the jail's process limit.  Release must
  return with none of them left; the figure is how long that takes.

Run: ``python bench/bench_jail.py [--cycles N]`` as root.  Target: reserve
and release each under 2 s, and release of a busy jail under 2 s, on a
2-core machine.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from support import jail

BUSY = (
    "for i in 1 2 3 4; do setsid sh -c 'while :; do sleep 0.01; sh -c : & "
    "exit 0; done' </dev/null >/dev/null 2>&1 & done; "
    "for i in 1 2; do setsid unshare -Ur sh -c 'while :; do sleep 0.01; done' "
    "</dev/null >/dev/null 2>&1 & done; "
    "setsid bash -c 'b() { b | b & }; b' </dev/null >/dev/null 2>&1 &"
)


def timed(site, action, board, **extra):
    """Seconds one run of the script took; it must succeed."""
    start = time.monotonic()
    result = site.run(action, board, **extra)
    elapsed = time.monotonic() - start
    if result.returncode:
        raise SystemExit(f"{action} failed: {result.stderr.strip()}")
    return elapsed, jail.parse_attrs(result.stdout)


def summary(name, samples):
    """One line of figures for ``samples`` (seconds)."""
    return (
        f"{name:<24} n={len(samples)}  median {statistics.median(samples):.3f} s"
        f"  max {max(samples):.3f} s"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: jails need namespaces, accounts and sshd")

    with jail.jail_site() as site, jail.board_link() as link:
        key = jail.make_key(site.base, "holder")
        pub = key.with_suffix(".pub").read_text().strip()
        env = {"BITELAB_ETHERIFACE": link.name, "BITELAB_SSHPUBKEY": pub}
        reserves, releases, busy_releases = [], [], []
        for _ in range(args.cycles):
            elapsed, _ = timed(site, "reserve", "bench-1", **env)
            reserves.append(elapsed)
            elapsed, _ = timed(site, "release", "bench-1", **env)
            releases.append(elapsed)

        for _ in range(args.cycles):
            _, attributes = timed(
                site, "reserve", "bench-1", BITELAB_JAIL_PIDS_MAX="200", **env
            )
            uid = (site.home_dir / attributes["ssh_user"]).stat().st_uid
            started = jail.ssh(attributes, key, BUSY)
            if started.returncode:
                raise SystemExit(f"cannot start the load: {started.stderr.strip()}")
            time.sleep(1)
            running = len(jail.processes_of_uids(uid, uid))
            elapsed, _ = timed(site, "release", "bench-1", **env)
            busy_releases.append(elapsed)
            left = jail.processes_of_uids(uid, uid)
            if left:
                raise SystemExit(f"release left {len(left)} processes of UID {uid}")
            print(f"busy jail: {running} processes of its UID before release, 0 after")

        print(summary("reserve", reserves))
        print(summary("release (idle)", releases))
        print(summary("release (busy)", busy_releases))


if __name__ == "__main__":
    main()
