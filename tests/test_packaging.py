"""Packaging: an editable install of the checkout gives ``twistd`` its plugin.

The README's contributor command is ``pip install -e . --config-settings
editable_mode=compat``.  This test runs the same PEP 660 build that pip runs
(setuptools' ``build_editable`` with that setting) on a copy of the
checkout, installs the wheel into an empty site directory, and runs
``twistd bitelab --help`` with only that directory and bitelab's
dependencies on the path: not the bitelab installed beside them.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from support.server import REPO

#: what an installed (not editable) bitelab puts into site-packages
INSTALLED = ("bitelab", "twisted/plugins/bitelab_plugin.py")


def dependencies_without_bitelab(target):
    """A directory of links to this environment's packages, minus bitelab."""
    site = sysconfig.get_paths()["purelib"]

    def mirror(source, destination, skip):
        os.makedirs(destination)
        for name in os.listdir(source):
            path = os.path.join(source, name)
            relative = os.path.relpath(path, site)
            if relative in skip or relative.startswith("bitelab-"):
                continue
            if name == "dropin.cache":
                continue
            if any(s.startswith(relative + "/") for s in skip):
                mirror(path, os.path.join(destination, name), skip)
            else:
                os.symlink(path, os.path.join(destination, name))

    mirror(site, target, INSTALLED)
    return target


def test_editable_install_in_compat_mode_has_the_twistd_plugin(tmp_path):
    """``twistd bitelab`` works from a compat-mode editable install, and runs
    the checkout's code."""
    source = tmp_path / "checkout"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__"),
    )
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, setuptools.build_meta as b; "
                "print(b.build_editable(sys.argv[1], {'editable_mode': 'compat'}))"
            ),
            str(wheels),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    wheel = wheels / built.stdout.split()[-1]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    deps = dependencies_without_bitelab(tmp_path / "deps")
    program = (
        "import site, sys\n"
        f"site.addsitedir({str(deps)!r}); site.addsitedir({str(site)!r})\n"
        "import bitelab; print('bitelab from', bitelab.__file__)\n"
        "from twisted.scripts.twistd import run\n"
        "sys.argv = ['twistd', 'bitelab', '--help']\n"
        "run()\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", program],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert f"bitelab from {source}/bitelab/__init__.py" in result.stdout, result.stderr
    assert "Usage: twistd [options] bitelab" in result.stdout, result.stderr
    assert "--config=" in result.stdout


def test_the_dependencies_view_hides_the_installed_bitelab(tmp_path):
    """Without the editable install, the view of the dependencies has no
    bitelab, so the test above cannot pass on the installed copy."""
    deps = dependencies_without_bitelab(tmp_path / "deps")
    program = (
        "import site\n"
        f"site.addsitedir({str(deps)!r})\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "print(sorted(p.tapname for p in getPlugins(IServiceMaker)))\n"
        "import importlib.util\n"
        "if importlib.util.find_spec('bitelab') is None: print('no module bitelab')\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", program],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    plugins, found = result.stdout.splitlines()
    assert "'web'" in plugins and "bitelab" not in plugins
    assert found == "no module bitelab"


def test_wheel_takes_its_version_from_the_package_and_ships_the_api_document(
    tmp_path,
):
    """The built wheel's version is ``bitelab.__version__`` (the one place
    it is written; ``bitelab --version``, ``bitelab-admin --version`` and
    ``/info`` read it too), and the wheel carries ``bitelab/openapi.json``,
    which the server serves."""
    import bitelab

    source = tmp_path / "checkout"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__"),
    )
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))",
            str(wheels),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    name = built.stdout.split()[-1]
    assert name.startswith(f"bitelab-{bitelab.__version__}-")
    with zipfile.ZipFile(wheels / name) as archive:
        files = archive.namelist()
        metadata = archive.read(
            f"bitelab-{bitelab.__version__}.dist-info/METADATA"
        ).decode()
    assert f"\nVersion: {bitelab.__version__}\n" in metadata
    assert "bitelab/openapi.json" in files
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert "\nversion =" not in f.read().split("[tool.setuptools.dynamic]")[0]
