"""The ``.env`` and board-file loaders: values, defaults and one-line errors."""

import os
import shutil

import pytest

from bitelab.config import check_lab, load_boards, load_config
from bitelab.errors import ConfigError
from bitelab.options import EtherIface, SerialConsole, Timeout
from bitelab.power import CmdPower, SNMPPower
from bitelab.tap import option_map
from support.seed import SEED
from support.tls import self_signed

OPTIONS = option_map()


def write(path, text):
    path.write_text(text)
    return str(path)


def env_file(tmp_path, text):
    return write(tmp_path / ".env", text)


def test_env_defaults_and_relative_paths(tmp_path):
    """Required keys are read, paths resolve against the file's directory, defaults fill the rest."""
    cfg = load_config(
        env_file(tmp_path, "# lab\n\ndb_file=state/db.sqlite\nboard_conf = b.ucl\n")
    )
    assert cfg.db_file == str(tmp_path / "state" / "db.sqlite")
    assert cfg.board_conf == str(tmp_path / "b.ucl")
    assert cfg.http_endpoint == "tcp:8080"
    assert cfg.ssh_endpoint == "tcp:2222"
    assert cfg.ssh_host_key == str(tmp_path / "ssh_host_ed25519_key")
    assert cfg.ssh_keys_dir == str(tmp_path / "keys")
    assert cfg.console_log_dir == str(tmp_path / "console")
    assert cfg.admins == frozenset()
    assert cfg.default_timeout == 3600


def test_env_all_keys(tmp_path):
    """Every documented key is accepted and parsed to its type."""
    cfg = load_config(
        env_file(
            tmp_path,
            "db_file=/var/db/bl.sqlite\nboard_conf=b.ucl\nhttp_endpoint=tcp:9000\n"
            "ssh_endpoint=tcp:9022:interface=127.0.0.1\nssh_host_key=hk\n"
            "ssh_keys_dir=/etc/keys\nadmins=alice, bob\nconsole_log_dir=logs\n"
            "default_timeout=60\nmax_timeout=120\nsetup_script_timeout=5\n"
            "power_cycle_pause=0.5\nexpiry_interval=0.25\nlab_name=lab-2\n"
            "console_log_max_bytes=65536\nconsole_log_backups=2\n",
        )
    )
    assert cfg.db_file == "/var/db/bl.sqlite"
    assert cfg.admins == frozenset({"alice", "bob"})
    assert (cfg.default_timeout, cfg.max_timeout, cfg.setup_script_timeout) == (
        60,
        120,
        5,
    )
    assert cfg.power_cycle_pause == 0.5
    assert cfg.expiry_interval == 0.25
    assert cfg.console_log_dir == str(tmp_path / "logs")
    assert cfg.ssh_endpoint == "tcp:9022:interface=127.0.0.1"
    assert cfg.lab_name == "lab-2"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("board_conf=b.ucl\n", "set exactly one of db_file (SQLite) and db_url"),
        (
            "board_conf=b.ucl\ndb_file=x\ndb_url=postgresql://h/d\n",
            "set exactly one of db_file",
        ),
        ("board_conf=b.ucl\ndb_url=mysql://h/d\n", "must be a PostgreSQL URL"),
        ("board_conf=b.ucl\ndb_file=x\nhost_name=h1\n", "host_name needs a database"),
        ("db_file=x\n", "required key 'board_conf' is missing"),
        ("db_file=x\nboard_conf=y\ndb_flie=z\n", ":3: unknown key 'db_flie'"),
        ("db_file=x\nboard_conf=y\njunk\n", ":3: expected key=value"),
        (
            "db_file=x\nboard_conf=y\ndefault_timeout=soon\n",
            "default_timeout: must be a whole",
        ),
        (
            "db_file=x\nboard_conf=y\ndefault_timeout=-5\n",
            "default_timeout: must be at least 1",
        ),
        ("db_file=x\nboard_conf=y\nmax_timeout=10\n", "max_timeout (10) is less than"),
        ("db_file=x\nboard_conf=y\nadmins=a b\n", "'a b' is not a valid user name"),
        ("db_file=x\nboard_conf=y\ndb_file=z\n", "key 'db_file' is set twice"),
        ("db_file=\nboard_conf=y\n", "db_file: must be a path"),
        (
            "db_file=x\nboard_conf=y\nhttp_endpoint=tcpx:80\n",
            "http_endpoint: 'tcpx:80' is not a usable endpoint description",
        ),
        (
            "db_file=x\nboard_conf=y\nssh_endpoint=tcp:notaport\n",
            "ssh_endpoint: 'tcp:notaport' is not a usable endpoint",
        ),
        (
            "db_file=x\nboard_conf=y\nhttp_endpoint=ssl:8443:privateKey=/nonexistent.pem\n",
            "No such file or directory",
        ),
        (
            "db_file=x\nboard_conf=y\nhttp_endpoint=tcp:99999\n",
            "the port must be a number from 0 to 65535, not '99999'",
        ),
        (
            "db_file=x\nboard_conf=y\nssh_endpoint=tcp:interface=127.0.0.1:port=65536\n",
            "not '65536'",
        ),
        (
            "db_file=x\nboard_conf=y\nhttp_endpoint=tcp6:123456:interface=\\:\\:1\n",
            "not '123456'",
        ),
        (
            "db_file=x\nboard_conf=y\nhttp_max_connections=0\n",
            "http_max_connections: must be at least 1",
        ),
        (
            "db_file=x\nboard_conf=y\nssh_login_grace_time=soon\n",
            "ssh_login_grace_time: must be a whole number of seconds",
        ),
        (
            "db_file=x\nboard_conf=y\nconsole_max_followers=-1\n",
            "console_max_followers: must be at least 1",
        ),
    ],
)
def test_env_errors_are_one_line(tmp_path, text, needle):
    """Each broken .env gives one line naming the file, key and problem."""
    path = env_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert needle in message
    assert path in message
    assert "\n" not in message


def test_ssl_endpoint_files_are_relative_to_the_env_file(tmp_path, monkeypatch):
    """Certificate and key of an ``ssl:`` endpoint are found beside ``.env``,
    whatever the working directory; escaped colons in a path survive."""
    conf = tmp_path / "conf"
    (conf / "tls:a").mkdir(parents=True)
    self_signed(conf / "tls:a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(
        env_file(
            conf,
            "db_file=db\nboard_conf=b.ucl\nhttp_endpoint=ssl:8443:interface=127.0.0.1"
            ":privateKey=tls\\:a/tls.key:certKey=tls\\:a/tls.pem\n",
        )
    )
    key = str(conf / "tls:a" / "tls.key").replace(":", "\\:")
    cert = str(conf / "tls:a" / "tls.pem").replace(":", "\\:")
    assert cfg.http_endpoint == (
        f"ssl:8443:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )


def test_ssl_endpoint_default_key_file_is_beside_the_env_file(tmp_path, monkeypatch):
    """``ssl:PORT`` alone reads ``server.pem`` beside ``.env``, not in the
    working directory."""
    key, cert = self_signed(tmp_path, "server")
    (tmp_path / "server.pem").write_bytes(cert.read_bytes() + key.read_bytes())
    monkeypatch.chdir("/")
    cfg = load_config(
        env_file(tmp_path, "db_file=db\nboard_conf=b\nhttp_endpoint=ssl:0\n")
    )
    assert cfg.http_endpoint == f"ssl:0:privateKey={tmp_path}/server.pem"


def test_limits_defaults_and_changed(tmp_path):
    """The connection and follower limits have their documented defaults,
    and each can be set."""
    defaults = load_config(env_file(tmp_path, "db_file=x\nboard_conf=y\n"))
    limits = (
        "http_max_connections",
        "ssh_login_grace_time",
        "ssh_max_unauthenticated",
        "ssh_max_unauthenticated_per_source",
        "ssh_max_auth_tries",
        "console_max_followers",
    )
    assert [getattr(defaults, key) for key in limits] == [512, 30, 64, 10, 6, 8]
    changed = load_config(
        env_file(
            tmp_path,
            "db_file=x\nboard_conf=y\n"
            + "".join(f"{key}={n}\n" for n, key in enumerate(limits, 2)),
        )
    )
    assert [getattr(changed, key) for key in limits] == [2, 3, 4, 5, 6, 7]


def test_env_missing_file(tmp_path):
    """A missing .env is a one-line error naming it."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nope.env"))


def executable(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_seed_board_file(tmp_path):
    """The seed's example loads into classes, boards and constructed options."""
    script = executable(tmp_path / "board_script")
    text = SEED.replace("/ztank/prog/board_script", script).replace(
        "{ cls = snmppower, host = poe, port = 3 },",
        "{ cls = snmppower, host = poe, port = 3 }, { cls = timeout, val = 2h; },",
    )
    lab = load_boards(write(tmp_path / "b.ucl", text), OPTIONS)
    assert lab.setup_script == script
    assert {n: c.arch for n, c in lab.classes.items()} == {
        "cora-z7s": "arm-armv7",
        "pine64-a64-lts": "arm64-aarch64",
    }
    assert list(lab.boards) == ["cora-1", "a64lts-1"]
    cora = lab.boards["cora-1"]
    assert cora.brdclass == "cora-z7s"
    assert cora.options == (SNMPPower(host="poe", port=2),)
    a64 = lab.boards["a64lts-1"]
    assert a64.option(EtherIface).val == "awg0.103"
    assert a64.option(SerialConsole) == SerialConsole(val="/dev/ttyU0", baud=115200)
    assert a64.option(SNMPPower).port == 3
    assert a64.option(Timeout).val == 7200


def test_relative_setup_script_and_cmdpower(tmp_path):
    """A relative setup_script is resolved against the board file's directory."""
    executable(tmp_path / "jail.sh")
    text = (
        "setup_script = jail.sh\nclasses { c { arch = x; } }\n"
        "boards [ { name = b; brdclass = c; options = [ "
        '{ cls = cmdpower, on = [/bin/true], off = [/bin/true], status = [/bin/echo, "on"] } ] } ]'
    )
    lab = load_boards(write(tmp_path / "b.ucl", text), OPTIONS)
    assert lab.setup_script == str(tmp_path / "jail.sh")
    assert isinstance(lab.boards["b"].options[0], CmdPower)


def two_boards(option):
    """Boards a and b of class c1 with the same option."""
    return (
        f"boards [ {{ name = a; brdclass = c1; options = [ {option} ] }}, "
        f"{{ name = b; brdclass = c1; options = [ {option} ] }} ]"
    )


BOARD_HEAD = "classes { c1 { arch = x; } c2 { arch = y; } }\n"


@pytest.mark.parametrize(
    "boards, needle",
    [
        (
            "boards [ { name = a; brdclass = c1; }, { name = a; brdclass = c1; } ]",
            "board 'a': defined more than once",
        ),
        (
            "boards [ { name = a; brdclass = c3; } ]",
            "unknown brdclass 'c3' (classes: c1, c2)",
        ),
        (
            "boards [ { name = c1; brdclass = c1; } ]",
            "board 'c1': a class has the same name",
        ),
        ('boards [ { name = "a b"; brdclass = c1; } ]', "names are letters"),
        ('boards [ { name = "a\\n"; brdclass = c1; } ]', "names are letters"),
        ("boards [ { brdclass = c1; } ]", "board #1: name is missing"),
        ("boards [ { name = a; } ]", "brdclass is missing"),
        (
            "boards [ { name = a; brdclass = c1; colour = red } ]",
            "unknown key 'colour'",
        ),
        (
            "boards [ { name = a; brdclass = c1; options = [ { cls = laser } ] } ]",
            "option #1: unknown cls 'laser' (known: cmdpower, etheriface, gpiopower",
        ),
        (
            "boards [ { name = a; brdclass = c1; options = [ { cls = snmppower, host = h, port = 1, colour = 2 } ] } ]",
            "option snmppower: unknown keyword 'colour' (accepted: host, port, community",
        ),
        (
            "boards [ { name = a; brdclass = c1; options = [ { cls = etheriface } ] } ]",
            "option etheriface: missing",
        ),
        (
            "boards [ { name = a; brdclass = c1; options = [ { cls = serialconsole, val = /dev/x, baud = fast } ] } ]",
            "option serialconsole: baud must be a positive integer",
        ),
        (
            "boards [ { name = a; brdclass = c1; options = [ { cls = timeout, val = 5 }, { cls = timeout, val = 6 } ] } ]",
            "another option already provides 'timeout'",
        ),
        (
            "boards [ { name = lab; brdclass = c1; } ]",
            "'lab' is the SSH login for tokens",
        ),
        (
            "boards [ { name = a; brdclass = c1; options = [ { host = x } ] } ]",
            "option #1: cls is missing (known: cmdpower",
        ),
        ("boards [ ]", "no boards are defined"),
        (
            "setup_script = /nonexistent/script; boards [ { name = a; brdclass = c1; } ]",
            "setup_script /nonexistent/script is not an executable file",
        ),
        (
            two_boards("{ cls = snmppower, host = sw, port = 3 }"),
            "board 'b': option snmppower: PoE port sw 161 1 3 is also used by board 'a'",
        ),
        (
            two_boards("{ cls = serialconsole, val = /dev/ttyU0 }"),
            "serial console /dev/ttyU0 is also used by board 'a'",
        ),
        (
            two_boards("{ cls = etheriface, val = e0.5 }"),
            "network interface e0.5 is also used by board 'a'",
        ),
        ("boards [ { name = a; brdclass = c1; } ] extra = 1", "unknown key 'extra'"),
    ],
)
def test_board_file_errors(tmp_path, boards, needle):
    """Each broken board file gives one line naming the file, the board and the problem."""
    path = write(tmp_path / "b.ucl", BOARD_HEAD + boards)
    with pytest.raises(ConfigError) as info:
        load_boards(path, OPTIONS)
    message = str(info.value)
    assert needle in message
    assert path in message
    assert "\n" not in message


def test_board_file_syntax_error_has_position(tmp_path):
    """A UCL syntax error names the file, line and column."""
    path = write(tmp_path / "b.ucl", 'classes {\n  c1 { arch = x; }\n"unterminated\n')
    with pytest.raises(ConfigError) as info:
        load_boards(path, OPTIONS)
    assert str(info.value).startswith(f"{path}:3:")


def test_class_needs_arch(tmp_path):
    """A class without arch is refused."""
    path = write(tmp_path / "b.ucl", "classes { c1 { vendor = x; } }")
    with pytest.raises(ConfigError, match="class 'c1': arch is missing"):
        load_boards(path, OPTIONS)


@pytest.mark.parametrize("name", [".env", "jail-demo.env", "tls.env"])
def test_example_labs_are_valid(name, tmp_path):
    """The shipped conf/ examples load, both files together (the TLS lab with
    a certificate made as the README makes it)."""
    conf = tmp_path / "conf"
    shutil.copytree(
        os.path.join(os.path.dirname(__file__), "..", "conf"),
        conf,
        ignore=shutil.ignore_patterns("state", "keys"),
    )
    (conf / "state").mkdir(exist_ok=True)
    self_signed(conf / "state")
    cfg = load_config(os.path.join(conf, name))
    lab = load_boards(cfg.board_conf, OPTIONS)
    check_lab(cfg, lab)
    assert lab.boards and lab.classes


def test_operations_settings(tmp_path):
    """The operations keys: defaults, values, and one line for a bad one; a
    ``systemd:`` endpoint is accepted outside systemd (its socket is looked
    for when the server starts)."""
    env = tmp_path / ".env"
    env.write_text("db_file=x\nboard_conf=y\n")
    cfg = load_config(str(env))
    assert (
        cfg.metrics_endpoint,
        cfg.log_level,
        cfg.http_access_log_max_bytes,
        cfg.http_access_log_backups,
        cfg.audit_retention_days,
    ) == ("", "info", 0, 7, 0)
    env.write_text(
        "db_file=x\nboard_conf=y\nmetrics_endpoint=tcp:9464:interface=127.0.0.1\n"
        "log_level=debug\nhttp_access_log_max_bytes=1048576\n"
        "http_access_log_backups=3\naudit_retention_days=365\n"
        "http_endpoint=systemd:domain=INET6:index=0\n"
    )
    cfg = load_config(str(env))
    assert cfg.metrics_endpoint == "tcp:9464:interface=127.0.0.1"
    assert cfg.log_level == "debug"
    assert (cfg.http_access_log_max_bytes, cfg.http_access_log_backups) == (
        1048576,
        3,
    )
    assert cfg.audit_retention_days == 365
    assert cfg.http_endpoint == "systemd:domain=INET6:index=0"
    for line, needle in (
        ("log_level=loud", "log_level: must be one of debug, info, warn"),
        ("metrics_endpoint=nope:1", "metrics_endpoint: 'nope:1' is not a usable"),
        ("audit_retention_days=-1", "audit_retention_days: must be between 0"),
        ("http_access_log_max_bytes=big", "http_access_log_max_bytes: must be a"),
    ):
        env.write_text(f"db_file=x\nboard_conf=y\n{line}\n")
        with pytest.raises(ConfigError) as e:
            load_config(str(env))
        assert needle in str(e.value) and "\n" not in str(e.value)
