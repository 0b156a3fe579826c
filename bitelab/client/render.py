"""How the CLI shows the API's documents as text: tables, details and times.

Times are shown in the local time zone with its name, or in UTC when asked;
every renderer takes the document and a ``Moment`` (the current time and
the zone).  Standard library only.
"""

from datetime import UTC, datetime
from typing import NamedTuple


class Moment(NamedTuple):
    """What a renderer needs besides the document: now, and the zone to show."""

    #: POSIX seconds
    now: float
    #: the zone times are shown in; None for the local one
    tz: object = None


def parse_time(text):
    """An ISO 8601 time from the API as an aware ``datetime``, or ``None``."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def show_time(value, tz=None):
    """An aware ``datetime`` in zone ``tz`` (local if None), with the zone's name."""
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def relative(text, now):
    """``text`` (ISO time) relative to ``now`` (epoch seconds): ``in 1h05m``."""
    value = parse_time(text)
    if value is None:
        return text or "-"
    seconds = int(value.timestamp() - now)
    if seconds <= 0:
        return "expired"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"in {hours // 24}d"
    if hours:
        return f"in {hours}h{minutes:02d}m"
    if minutes:
        return f"in {minutes}m"
    return f"in {secs}s"


def absolute(text, moment):
    """``text`` (ISO time) in the view's zone, with the relative time if ahead."""
    value = parse_time(text)
    if value is None:
        return text or "-"
    short = show_time(value, moment.tz)
    if value.timestamp() > moment.now:
        return f"{short} ({relative(text, moment.now)})"
    return short


def table(headers, rows):
    """Rows of text as aligned columns, with a header line."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [
        max(len(cell) for cell in column)
        for column in zip(headers, *rows, strict=False)
    ]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [list(headers), *rows]
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def or_dash(value):
    """``value`` for a table cell: ``-`` when empty, yes/no for booleans."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value in (None, "") else value


def _count(value):
    return len(value) if isinstance(value, list | tuple) else value


def _state(board):
    """The state column: maintenance with its reason, removed boards marked."""
    state = or_dash(board.get("state"))
    reason = board.get("reason")
    if reason:
        # the table stays narrow; `info` shows the whole reason
        state += f" ({reason[:37] + '...' if len(reason) > 40 else reason})"
    if board.get("removed"):
        state += " [removed from the board file]"
    return state


#: how the power column marks a board whose last power operation failed
POWER_FAILED = "(failed)"


def _power(board):
    attrs = board.get("attrs") or {}
    power = or_dash(attrs.get("power"))
    return f"{power} {POWER_FAILED}" if attrs.get("power_error") else power


def render_boards(document, moment):
    """The ``list`` table; a note under it when a power operation failed."""
    boards = document.get("boards", [])
    rows = [
        [
            board.get("name"),
            or_dash(board.get("class")),
            _state(board),
            or_dash(board.get("holder")),
            (
                relative(board["expires_at"], moment.now)
                if board.get("expires_at")
                else "-"
            ),
            _power(board),
        ]
        for board in boards
    ]
    if not rows:
        return "no boards\n"
    head = ["BOARD", "CLASS", "STATE", "HOLDER", "EXPIRES", "POWER"]
    if any(board.get("host") for board in boards):
        # a lab of several hosts: which host each board hangs off
        head.insert(2, "HOST")
        for row, board in zip(rows, boards, strict=True):
            row.insert(2, _host(board))
    text = table(head, rows)
    if any((board.get("attrs") or {}).get("power_error") for board in boards):
        text += (
            f"{POWER_FAILED}: the last power operation failed; "
            "bitelab info BOARD says why\n"
        )
    return text


def _host(board):
    host = or_dash(board.get("host"))
    return f"{host} (down)" if board.get("host_down") else host


def render_classes(document, moment):
    """The ``classes`` table."""
    known = {"name", "arch", "free", "boards"}
    rows = [
        [
            cls.get("name"),
            or_dash(cls.get("arch")),
            f"{_count(cls.get('free', 0))}/{_count(cls.get('boards', 0))}",
            " ".join(
                f"{key}={value}"
                for key, value in sorted(cls.items())
                if key not in known
            )
            or "-",
        ]
        for cls in document.get("classes", [])
    ]
    if not rows:
        return "no classes\n"
    return table(["CLASS", "ARCH", "FREE/TOTAL", "ATTRIBUTES"], rows)


def render_board(board, moment):
    """One board's details, then its attributes."""
    fields = [
        ("board", board.get("name")),
        ("class", or_dash(board.get("class"))),
        ("arch", or_dash(board.get("arch"))),
        ("state", or_dash(board.get("state"))),
        ("holder", or_dash(board.get("holder"))),
        ("reserved", absolute(board.get("reserved_at"), moment)),
        ("expires", absolute(board.get("expires_at"), moment)),
    ]
    extra = [
        (key, value)
        for key, value in board.items()
        if key not in {"name", "class", "arch", "state", "holder", "attrs"}
        and key not in {"reserved_at", "expires_at", "removed"}
        and value not in (None, "")
    ]
    if board.get("removed"):
        extra.append(("removed", "yes: no longer in the board file; release it"))
    attributes = sorted((board.get("attrs") or {}).items())
    width = max(len(key) for key, _ in fields + extra + attributes) + 1
    lines = [f"{key + ':':<{width}} {value}" for key, value in fields + extra]
    if attributes:
        lines.append("attributes:")
        lines.extend(f"  {key}={or_dash(value)}" for key, value in attributes)
    return "\n".join(lines) + "\n"


def render_reserved(board, moment):
    """What ``reserve`` got: the board, its expiry and the setup attributes."""
    name = board.get("name")
    head = f"reserved {name} (class {or_dash(board.get('class'))})"
    if board.get("expires_at"):
        head += f" until {absolute(board['expires_at'], moment)}"
    lines = [head]
    lines.extend(
        f"  {key}={or_dash(value)}"
        for key, value in sorted((board.get("attrs") or {}).items())
    )
    if (board.get("attrs") or {}).get("console"):
        lines.append(f"console: bitelab console {name}")
    return "\n".join(lines) + "\n"


def render_logout(document, moment):
    """What ``logout`` did."""
    return f"token of {document.get('user')} revoked\n"


def render_web_link(document, moment):
    """What ``web`` prints: the link alone, for a browser or a script."""
    return document["url"] + "\n"


def render_released(board, moment):
    """What ``release`` did; a board left in maintenance says why."""
    text = f"released {board.get('name')}: now {or_dash(board.get('state'))}"
    if board.get("reason"):
        text += f" ({board['reason']}; an admin ends it with: "
        text += f"bitelab maintenance --end {board.get('name')})"
    return text + "\n"


def render_whoami(document, moment):
    """The token's user."""
    suffix = " (admin)" if document.get("admin") else ""
    return f"{document.get('user')}{suffix}\n"


def render_labs(document, moment):
    """The ``labs`` table: the labs file's labs."""
    rows = [
        [
            lab["name"],
            or_dash(lab.get("url")),
            or_dash(lab.get("token")),
            or_dash(lab.get("cacert")),
        ]
        for lab in document.get("labs", [])
    ]
    if not rows:
        return "no labs yet; add one with: bitelab labs add NAME URL\n"
    return table(["LAB", "URL", "TOKEN", "CACERT"], rows)


def ago(text, now):
    """``text`` (ISO time) before ``now`` (epoch seconds): ``3m ago``."""
    value = parse_time(text)
    if value is None:
        return text or "-"
    seconds = max(int(now - value.timestamp()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d ago"
    if hours:
        return f"{hours}h{minutes:02d}m ago"
    if minutes:
        return f"{minutes}m ago"
    return f"{secs}s ago"


def render_queue(document, moment):
    """The ``queue`` table: the waiters shown, and how many wait in all."""
    entries = document.get("queue", [])
    total = document.get("total", len(entries))
    rows = [
        [
            or_dash(entry.get("position")),
            or_dash(entry.get("id")),
            or_dash(entry.get("user")),
            or_dash(entry.get("target")),
            or_dash(entry.get("priority")),
            ago(entry.get("since"), moment.now),
            relative(entry["deadline"], moment.now) if entry.get("deadline") else "-",
        ]
        for entry in entries
    ]
    if not rows:
        if total:
            return f"none of yours; {total} waiting in all\n"
        return "nobody is waiting\n"
    headers = ["POSITION", "ID", "USER", "TARGET", "PRIORITY", "SINCE", "DEADLINE"]
    text = table(headers, rows)
    if total > len(rows):
        text += f"{total} waiting in all\n"
    return text


def render_cancelled(document, moment):
    """What ``queue --cancel`` did."""
    return f"waiter {document.get('id')} {or_dash(document.get('state'))}\n"


def _place(data):
    line = f"waiter {data.get('waiter')} for {data.get('target')}: "
    line += f"position {data.get('position')} ({data.get('ahead')} ahead"
    if data.get("total") is not None:
        line += f", {data['total']} waiting"
    return line + ")"


def _expiring(data, moment):
    line = f"{data.get('board')}: reservation {data.get('reservation')} ends"
    seconds = data.get("seconds_left")
    if seconds is None and str(data.get("detail") or "").isdigit():
        seconds = int(data["detail"])
    if isinstance(seconds, int | float):
        line += f" in {relative_seconds(seconds)}"
    if data.get("expires_at"):
        when = parse_time(data["expires_at"])
        line += f" (at {show_time(when, moment.tz) if when else data['expires_at']})"
    return line


def relative_seconds(seconds):
    """A count of seconds as ``1h05m``, ``10m`` or ``42s``."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m" + (f"{secs:02d}s" if secs else "")
    return f"{secs}s"


def _board_change(data):
    parts = [str(or_dash(data.get("board")))]
    holder, user = data.get("holder"), data.get("user")
    if holder:
        parts.append(f"holder {holder}")
    if user and user != holder:
        parts.append(f"by {user}")
    if data.get("reservation") is not None:
        parts.append(f"reservation {data['reservation']}")
    line = ", ".join(parts)
    if data.get("detail"):
        line += f": {data['detail']}"
    return line


def describe_event(kind, data, moment):
    """What an event of the stream says, in words (without time and kind)."""
    if not isinstance(data, dict):
        return str(data)
    if "position" in data:
        return _place(data)
    if kind == "queued":
        return (
            f"waiter {data.get('waiter')} of {data.get('holder')} {data.get('detail')}"
        )
    if kind == "granted":
        return (
            f"waiter {data.get('waiter')} gets {data.get('board')} "
            f"(reservation {data.get('reservation')})"
        )
    if kind == "left":
        why = data.get("why") or data.get("detail")
        return f"waiter {data.get('waiter')} left the queue: {why}"
    if kind == "expiring":
        return _expiring(data, moment)
    return _board_change(data)


def render_event(kind, data, moment):
    """One line of ``watch``: the event's time (or now), its kind, what it says."""
    when = parse_time(data.get("time")) if isinstance(data, dict) else None
    if when is None:
        when = datetime.fromtimestamp(moment.now, UTC)
    return f"{show_time(when, moment.tz)}  {kind:<12} {describe_event(kind, data, moment)}\n"
