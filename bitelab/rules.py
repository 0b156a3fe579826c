"""The reservation rules: who may do what to a board in which state.

Pure functions of a board's row, the caller and ``now``: no I/O, no clock,
no database.  The store calls them inside its transactions, so a decision
and the compare-and-set that acts on it see the same row.

A board is in one of these states:

``free``
    nobody holds it; it can be reserved.
``reserving``
    a reservation has been recorded and its setup (reserve script) runs.
``reserved``
    the reservation is usable: consoles, power, extension.
``releasing``
    the reservation is ending: consoles cut, power off, release script.
``maintenance``
    out of service (an admin, or an ending that went wrong).

Every transition names the reservation it belongs to, so a step of an
earlier reservation never touches a later one::

    free --claim--> reserving --setup done--> reserved
                    reserving --setup failed / interrupted--> releasing
    reserved --release / expire / force--> releasing
    releasing --wound down--> free | maintenance
    free <--> maintenance (admins)
"""

from bitelab.errors import Forbidden, Invalid, NotFound, Unavailable

FREE = "free"
RESERVING = "reserving"
RESERVED = "reserved"
RELEASING = "releasing"
MAINTENANCE = "maintenance"
STATES = (FREE, RESERVING, RESERVED, RELEASING, MAINTENANCE)
#: states a board passes through while side effects run
TRANSITIONAL = (RESERVING, RELEASING)

#: why a reservation ended (``cause`` of the reservation and its events)
RELEASE = "release"
FORCE = "force_release"
EXPIRE = "expire"
SETUP_FAILED = "setup_failed"
INTERRUPTED = "interrupted"
ABANDONED = "abandoned"


class AlreadyHeld(Unavailable):
    """The caller already holds the board: waiting for it would never end."""


#: why a board that left the board file while held is not simply freed: its
#: options (power, interface) left with the file, so nothing can switch it
#: off or take its jail down, and an admin must look
REMOVED_PROBLEM = (
    "removed from the board file while reserved: not powered off, "
    "release script not run"
)
INTERRUPTED_PROBLEM = "the server stopped while the reservation was being set up"
MAX_REASON = 500


def check_timeout(value, max_timeout):
    """``value`` as a reservation length in seconds; ``Invalid`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid("timeout must be a whole number of seconds")
    if not 0 < value <= max_timeout:
        raise Invalid(f"timeout must be between 1 and {max_timeout} seconds")
    return value


def check_reason(reason, required=True):
    """A one-line reason of at most ``MAX_REASON`` characters, stripped."""
    if reason is None and not required:
        return None
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise Invalid(
            f"reason must be a non-empty string of at most {MAX_REASON} characters"
        )
    if any(not c.isprintable() for c in reason.strip()):
        raise Invalid("reason must be one line of printable text")
    return reason.strip()


def check_claim(board, user):
    """Raise unless the board named by a reserve call can be claimed now.

    ``board`` is the store's row (a dict with ``state``, ``holder``...), or
    None for an unknown board.
    """
    if board is None:
        raise NotFound("no such board")
    name, state = board["name"], board["state"]
    if state == FREE:
        return
    if state in (RESERVING, RESERVED) and board["holder"] == user:
        raise AlreadyHeld(
            f"you already hold board {name} "
            f"(reservation {board['reservation_id']}); release it first"
        )
    if state in (RESERVING, RESERVED):
        raise Unavailable(f"board {name} is reserved by {board['holder']}")
    if state == RELEASING:
        raise Unavailable(f"board {name} is being released; try again shortly")
    raise Unavailable(f"board {name} is in maintenance")


def check_release(board, user, admin, force):
    """``cause`` of ``user`` ending the reservation of ``board``; raises if refused.

    A board already releasing gives 409: the release under way is the only
    one, so no second release script can ever run.
    """
    name, state = board["name"], board["state"]
    if state == RELEASING:
        raise Unavailable(f"board {name} is already being released")
    if state == RESERVING:
        if board["holder"] == user or admin:
            raise Unavailable(
                f"board {name} is still being set up; release it once reserve "
                "has answered"
            )
        raise Forbidden(f"board {name} is not held by you")
    if state != RESERVED:
        raise Unavailable(f"board {name} is not reserved")
    if board["holder"] == user:
        return RELEASE
    if not admin:
        raise Forbidden(f"board {name} is not held by you")
    if not force:
        raise Forbidden(
            f"board {name} is held by {board['holder']}; force the release "
            "(bitelab release -f) to take it back"
        )
    return FORCE


def release_detail(cause, actor, reason=None):
    """The one-line text shown to the holder and in the audit log."""
    text = {
        RELEASE: "released by the holder",
        FORCE: f"released by admin {actor}",
        EXPIRE: "expired",
        SETUP_FAILED: "setup failed",
        INTERRUPTED: INTERRUPTED_PROBLEM,
        ABANDONED: "its waiter left before it was handed over",
    }[cause]
    if reason:
        text += f": {reason}"
    return text


def check_use(board, user, admin):
    """Raise unless ``user`` may switch power or extend ``board`` now."""
    name, state = board["name"], board["state"]
    if state == RESERVED and board["holder"] == user:
        return
    if not admin:
        raise Forbidden(f"board {name} is not held by you")
    if state in (RESERVING, RELEASING):
        raise Unavailable(f"board {name} is {state}; try again shortly")


def check_console(board, user, admin):
    """The reservation id a console session of ``user`` belongs to; raises if refused.

    Users attach only to a board they hold, in its usable state; admins to
    any board that is not ending (their session belongs to the reservation
    current when they attach, None on a free board).
    """
    name, state = board["name"], board["state"]
    if state == RESERVED and board["holder"] == user:
        return board["reservation_id"]
    if not admin:
        raise Forbidden(f"you do not hold board {name}")
    if state == RELEASING:
        raise Unavailable(f"board {name} is being released")
    return board["reservation_id"]


def check_maintenance_start(board):
    """Raise unless ``board`` may be put in maintenance."""
    name, state = board["name"], board["state"]
    if state in (RESERVING, RESERVED, RELEASING):
        raise Unavailable(
            f"board {name} is reserved by {board['holder']}; force-release it first"
        )


def check_maintenance_end(board):
    """Raise unless ``board`` is in maintenance."""
    if board["state"] != MAINTENANCE:
        raise Unavailable(f"board {board['name']} is not in maintenance")


def ending_outcome(
    problems, setup_failures, max_setup_failures, configured, last_error=None
):
    """``(state, reason)`` a board reaches once its reservation has wound down.

    Any problem (power off failed, release script failed, board removed from
    the board file) sends it to maintenance; so do ``max_setup_failures``
    reserve-script failures in a row, so a broken board stops being handed
    out.
    """
    problems = list(problems)
    if not configured:
        problems.append(REMOVED_PROBLEM)
    if max_setup_failures and setup_failures >= max_setup_failures:
        problems.append(
            f"reserve script failed {setup_failures} times in a row"
            + (f" (last: {last_error})" if last_error else "")
        )
    if problems:
        return MAINTENANCE, "; ".join(problems)
    return FREE, None


def is_due(board, now):
    """Whether a reserved board's time is up at ``now``."""
    return board["state"] == RESERVED and board["expires_at"] <= now


def check_limits(user, held, held_in_class, brdclass, lab_limit, class_limit):
    """Raise ``Unavailable`` if ``user`` may hold no more boards (of ``brdclass``).

    ``held`` counts the reservations ``user`` holds in the lab, and
    ``held_in_class`` those of boards of ``brdclass``; a limit of 0 or None
    means none.
    """
    if lab_limit and held >= lab_limit:
        raise Unavailable(
            f"{user} holds {held} boards; the lab's limit is {lab_limit} per user"
        )
    if class_limit and held_in_class >= class_limit:
        raise Unavailable(
            f"{user} holds {held_in_class} boards of class {brdclass}; its limit "
            f"is {class_limit} per user"
        )


def queue_order(waiter):
    """Sort key of waiters: higher priority first, then earlier arrival."""
    return (-waiter["priority"], waiter["id"])


def competes(a, b):
    """Whether waiters ``a`` and ``b`` can be served by one same board."""
    if a["class"] != b["class"]:
        return False
    return a["board"] is None or b["board"] is None or a["board"] == b["board"]


def positions(waiters):
    """``{id: (position, ahead)}`` for waiting entries.

    ``position`` is the place in the lab's queue order (1 first);
    ``ahead`` counts the waiters before it that could take the board it
    waits for.
    """
    ordered = sorted(waiters, key=queue_order)
    result = {}
    for index, waiter in enumerate(ordered):
        ahead = sum(1 for other in ordered[:index] if competes(other, waiter))
        result[waiter["id"]] = (index + 1, ahead)
    return result


def check_wait(wait, max_wait):
    """``wait`` as whole seconds to wait for a board (0: do not wait)."""
    if isinstance(wait, bool) or not isinstance(wait, int):
        raise Invalid("wait must be a whole number of seconds")
    if not 0 <= wait <= max_wait:
        raise Invalid(f"wait must be between 0 and {max_wait} seconds")
    return wait


def check_priority(priority, admin):
    """A waiter's priority: users share the default (0); admins set another."""
    if priority is None:
        return 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise Invalid("priority must be a whole number")
    if not admin:
        raise Forbidden("only admins may set a priority")
    if not -1000 <= priority <= 1000:
        raise Invalid("priority must be between -1000 and 1000")
    return priority


def notices_due(expires_at, noticed, thresholds, now, length):
    """The smallest notice threshold crossed at ``now`` and not yet given, or None.

    A threshold not shorter than the reservation itself (``length``
    seconds, from its start or its last extension) gives no notice: its
    holder has just been told how long it lasts.
    """
    left = expires_at - now
    crossed = [
        t
        for t in thresholds
        if t < length and left <= t and (noticed is None or t < noticed)
    ]
    return min(crossed) if crossed else None
