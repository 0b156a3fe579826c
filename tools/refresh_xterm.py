"""Refresh the xterm.js files the web UI ships, from npm.

The browser console uses xterm.js and its fit add-on, installed from npm
and committed under ``bitelab/webstatic/vendor`` with their licences, so
that neither the server nor the tests need npm or the network.  This
script fetches the versions pinned below with ``npm pack`` (npm checks the
registry's integrity hash), checks the pinned integrity too, and copies
the files the UI loads into the package, with a ``VERSIONS`` file saying
what they are.  To move to a new version: change ``PINNED`` (the
integrity is what ``npm view PACKAGE@VERSION dist.integrity`` prints),
run ``python tools/refresh_xterm.py`` from the repository, check the
console in a browser, and commit.
"""

import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile

#: package -> (version, integrity of its npm tarball)
PINNED = {
    "@xterm/xterm": (
        "6.0.0",
        (
            "sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ"
            "+V0a8/kIM2WD3sMOYg=="
        ),
    ),
    "@xterm/addon-fit": (
        "0.11.0",
        (
            "sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQ"
            "ei89QCiZZP86DCPF7g=="
        ),
    ),
}
#: package -> {file in its tarball: name under the vendor directory}
FILES = {
    "@xterm/xterm": {
        "lib/xterm.mjs": "xterm.mjs",
        "css/xterm.css": "xterm.css",
        "LICENSE": "xterm-LICENSE.txt",
    },
    "@xterm/addon-fit": {
        "lib/addon-fit.mjs": "addon-fit.mjs",
        "LICENSE": "addon-fit-LICENSE.txt",
    },
}
VENDOR = pathlib.Path(__file__).resolve().parent.parent / "bitelab/webstatic/vendor"


def versions_text():
    """The ``VERSIONS`` file: one ``package version integrity`` line each."""
    return "".join(
        f"{name} {version} {integrity}\n"
        for name, (version, integrity) in sorted(PINNED.items())
    )


def main():
    """Fetch, check and copy; exit status 1 with one line if anything is wrong."""
    VENDOR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        specs = [f"{name}@{version}" for name, (version, _) in PINNED.items()]
        try:
            out = subprocess.run(
                ["npm", "pack", "--json", "--pack-destination", work, *specs],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"refresh_xterm: npm pack failed: {getattr(e, 'stderr', e)}")
        for packed in json.loads(out):
            name = packed["name"]
            version, integrity = PINNED[name]
            if packed["version"] != version or packed["integrity"] != integrity:
                sys.exit(
                    f"refresh_xterm: {name} {packed['version']} has integrity "
                    f"{packed['integrity']}, not the pinned {version} {integrity}"
                )
            with tarfile.open(pathlib.Path(work) / packed["filename"]) as tar:
                for member, target in FILES[name].items():
                    data = tar.extractfile(f"package/{member}").read()
                    (VENDOR / target).write_bytes(data)
    (VENDOR / "VERSIONS").write_text(versions_text())
    print(f"refresh_xterm: {', '.join(specs)} copied to {VENDOR}")


if __name__ == "__main__":
    main()
