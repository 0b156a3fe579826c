"""The API's JSON objects: boards, classes, reservations and audit entries.

Pure functions of the store's rows, the board file and what the caller may
see: setup-script attributes and power-failure details only for the holder
(attributes) and admins (both).
"""

import json
from datetime import UTC, datetime

from bitelab import rules
from bitelab.boardpower import public_message
from bitelab.options import PowerOption, SerialConsole, Timeout

#: states in which a reservation exists and is shown with the board
_HELD = (rules.RESERVING, rules.RESERVED, rules.RELEASING)


def iso(seconds):
    """An ISO 8601 UTC string for a POSIX time, or None."""
    if seconds is None:
        return None
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def default_timeout(lab, config, name):
    """How long a reservation of board ``name`` lasts unless asked otherwise."""
    board = lab.boards.get(name)
    option = board.option(Timeout) if board else None
    return option.val if option else config.default_timeout


def _facts(lab, config, name, board):
    """What every host shows of ``board`` (``name``) of this host's ``lab``:
    ``{"attrs": ..., "power": bool}``, its own attributes and whether it has
    power control."""
    attributes = {}
    for option in board.options:
        attributes.update(option.static_attrs())
    attributes["default_timeout"] = default_timeout(lab, config, name)
    if board.option(SerialConsole) is not None:
        attributes["console"] = True
    return {"attrs": attributes, "power": board.option(PowerOption) is not None}


def board_facts(lab, config):
    """``_facts`` of each board of ``lab`` (this host's file), by name: what
    the other hosts show of them."""
    return {
        name: _facts(lab, config, name, board) for name, board in lab.boards.items()
    }


def board_view(
    row, user, admin, lab, config, power_errors, consoles, down_hosts=frozenset()
):
    """The BOARD object for one store row, as ``user`` may see it."""
    name = row["name"]
    board = lab.boards.get(name)
    brdclass = lab.classes.get(row["class"])
    attributes = dict(brdclass.attrs) if brdclass is not None else {}
    if board is not None:
        facts = _facts(lab, config, name, board)
    elif row["host"] != config.host_name:
        # another host's board: as that host described it
        facts = json.loads(row["facts"] or "{}")
    else:
        facts = {}
    attributes.update(facts.get("attrs", {}))
    if facts.get("power"):
        attributes["power"] = row["power"]
        attributes["power_read_at"] = iso(row["power_at"])
        # power errors and consoles are this host's own boards'
        problem = power_errors.get(name)
        if problem is not None:
            attributes["power_error"] = problem if admin else public_message(problem)
    console = consoles.get(name) if facts.get("attrs", {}).get("console") else None
    if console is not None:
        attributes["console_connected"] = console.connected
    held = row["state"] in _HELD
    if row["state"] == rules.RESERVED and (user == row["holder"] or admin):
        attributes.update(row["script_attrs"])
    result = {
        "name": name,
        "class": row["class"],
        "arch": row["arch"],
        "state": row["state"],
        "holder": row["holder"] if held else None,
        "reserved_at": iso(row["reserved_at"]) if held else None,
        "expires_at": iso(row["expires_at"]) if held else None,
        "reservation_id": row["reservation_id"] if held else None,
        "attrs": attributes,
    }
    if row["host"]:
        result["host"] = row["host"]
        if row["host"] in down_hosts:
            result["host_down"] = True
    if row["state"] == rules.MAINTENANCE:
        result["reason"] = row["reason"]
    if not row["configured"]:
        result["removed"] = True
    return result


def class_view(name, brdclass, total, free):
    """One entry of ``GET /classes``."""
    entry = dict(brdclass.attrs)
    entry.update({"name": name, "arch": brdclass.arch, "boards": total, "free": free})
    return entry


def reservation_view(row):
    """One reservation as the API shows it."""
    return {
        "id": row["id"],
        "board": row["board"],
        "user": row["user"],
        "state": row["state"],
        "reserved_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]),
        "ended_at": iso(row["ended_at"]),
        "cause": row["cause"],
        "detail": row["detail"],
        "outcome": row["outcome"],
    }


def event_view(row):
    """One audit log entry as the API shows it."""
    return {
        "id": row["id"],
        "time": iso(row["at"]),
        "user": row["user"],
        "board": row["board"],
        "action": row["action"],
        "detail": row["detail"],
        "reservation": row["reservation"],
    }
