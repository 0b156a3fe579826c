"""Where the lab is and how to reach it: the environment, or a named lab.

A lab is named by ``--lab NAME`` or ``BITELAB_LAB``; its settings come from
the labs file, ``$XDG_CONFIG_HOME/bitelab/labs.ini`` (by default
``~/.config/bitelab/labs.ini``), one INI section per lab::

    [example]
    url = http://127.0.0.1:8080
    token = bl_...
    cacert = /etc/ssl/example-ca.pem

Without a lab name, ``BITELAB_URL``, ``BITELAB_AUTH`` and ``BITELAB_CACERT``
say it.  A named lab takes nothing from those variables, so that one lab's
token is never sent to another.  Standard library only.
"""

import configparser
import os
from pathlib import Path
from typing import NamedTuple


class ConfigProblem(Exception):
    """A usage or local configuration problem: exit status 2, one-line message."""


class Settings(NamedTuple):
    """Where the server is, the token to show it and the CA file to trust."""

    url: str
    token: str | None
    cacert: str | None = None
    #: the lab's name in the labs file, or None for the environment
    lab: str | None = None


def token_command(lab=None):
    """The command that gets a token for ``lab`` (or the environment's lab)."""
    if lab is None:
        return "bitelab token"
    return f"bitelab --lab {lab} token --save"


def config_dir(environ):
    """The directory of bitelab's client files (labs file, known hosts)."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or str(Path.home()), ".config"
    )
    return Path(base) / "bitelab"


def labs_file(environ):
    """The path of the labs file."""
    return config_dir(environ) / "labs.ini"


def check_url(url, where):
    """``url`` if it is an http(s) URL; ``ConfigProblem`` naming ``where`` if not."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ConfigProblem(
            f"{where}={url!r} is not an http:// or https:// URL; "
            "give the lab server's address, e.g. http://lab.example.org:8080"
        )
    return url


def _parser(path):
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        raise ConfigProblem(f"cannot read {path}: {reason}") from exc
    return parser


def read_labs(environ):
    """``{name: {"url", "token", "cacert"}}`` from the labs file."""
    parser = _parser(labs_file(environ))
    return {
        name: {key: parser[name].get(key) for key in ("url", "token", "cacert")}
        for name in parser.sections()
    }


def _save(environ, parser):
    path = labs_file(environ)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    # tokens are secrets: the file is the user's alone
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        parser.write(f)
    os.replace(temp, path)
    return path


def add_lab(environ, name, url, cacert=None):
    """Add lab ``name`` at ``url`` (or change it); a new URL drops the token."""
    if not name or any(c in name for c in "[]\n") or name != name.strip():
        raise ConfigProblem(f"{name!r} is not a usable lab name")
    check_url(url, "URL")
    if cacert is not None:
        cacert = os.path.abspath(cacert)
        if not os.path.isfile(cacert):
            raise ConfigProblem(f"CA file {cacert} does not exist")
    parser = _parser(labs_file(environ))
    if parser.has_section(name) and parser[name].get("url") != url:
        parser.remove_section(name)
    if not parser.has_section(name):
        parser.add_section(name)
    parser[name]["url"] = url
    if cacert is not None:
        parser[name]["cacert"] = cacert
    return _save(environ, parser)


def save_token(environ, name, token):
    """Keep ``token`` as lab ``name``'s token."""
    parser = _parser(labs_file(environ))
    if not parser.has_section(name):
        raise ConfigProblem(f"no lab named {name!r} in {labs_file(environ)}")
    parser[name]["token"] = token
    return _save(environ, parser)


def remove_lab(environ, name):
    """Forget lab ``name``."""
    parser = _parser(labs_file(environ))
    if not parser.remove_section(name):
        raise ConfigProblem(f"no lab named {name!r} in {labs_file(environ)}")
    return _save(environ, parser)


def load_settings(environ, lab=None, need_token=True):
    """The settings of lab ``lab`` (or ``BITELAB_LAB``), else of the environment.

    ``ConfigProblem`` says what is missing and how to set it.
    """
    lab = lab or environ.get("BITELAB_LAB", "").strip() or None
    if lab is not None:
        return _lab_settings(environ, lab, need_token)
    url = environ.get("BITELAB_URL", "").strip()
    if not url:
        raise ConfigProblem(
            "BITELAB_URL is not set; set it to the lab server's address, "
            "e.g. export BITELAB_URL=http://lab.example.org:8080, or name a lab "
            "with --lab NAME"
        )
    check_url(url, "BITELAB_URL")
    token = environ.get("BITELAB_AUTH", "").strip() or None
    if need_token and token is None:
        raise ConfigProblem(
            f"BITELAB_AUTH is not set; get a token with: export "
            f"BITELAB_AUTH=$({token_command()})"
        )
    cacert = environ.get("BITELAB_CACERT", "").strip() or None
    return Settings(url=url, token=token, cacert=cacert)


def _lab_settings(environ, lab, need_token):
    labs = read_labs(environ)
    path = labs_file(environ)
    if lab not in labs:
        known = ", ".join(sorted(labs)) or "none yet"
        raise ConfigProblem(
            f"no lab named {lab!r} in {path} (labs: {known}); add it with: "
            f"bitelab labs add {lab} URL"
        )
    entry = labs[lab]
    if not entry["url"]:
        raise ConfigProblem(f"lab {lab!r} in {path} has no url")
    check_url(entry["url"], f"{path}: [{lab}] url")
    if need_token and not entry["token"]:
        raise ConfigProblem(
            f"lab {lab!r} has no token yet; get one with: {token_command(lab)}"
        )
    return Settings(
        url=entry["url"], token=entry["token"], cacert=entry["cacert"], lab=lab
    )
