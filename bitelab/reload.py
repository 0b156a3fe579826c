"""SIGHUP: reopen the logs, reload the SSH keys and the board file.

``BoardReloader.reload`` reads the board file again and, if it is valid,
brings the running server in line with it; if not, the server keeps the
boards it has and logs (and audits) why.  Boards follow the rules of a
restart (``bitelab.store.sync_boards``): an added board is free, a changed
one keeps its state and reservation, and a removed one goes at once unless
a reservation holds it; then it stays, marked removed, until that ends.

What changes for the running server:

* boards whose entry did not change keep everything: their option objects
  (a GPIO line stays requested), console, console sessions and log;
* a board whose serial console changed, or that left the file, loses its
  console: its sessions are closed with the reason, and a new console is
  opened for a changed one;
* power options of changed and removed boards let go of their devices;
* the setup script is the new file's.

Each reload is one audit entry: ``reload`` with what changed, or
``reload_failed`` with the problem.
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from bitelab.config import check_lab, load_boards
from bitelab.errors import BitelabError, ConfigError
from bitelab.options import PowerOption, SerialConsole
from bitelab.views import board_facts

log = Logger()


def diff_boards(old, new):
    """``(added, changed, removed)`` board names from ``old`` to ``new`` (LabConfigs).

    A board changed if its entry or its class (architecture, attributes)
    did.
    """

    def entry(lab, name):
        board = lab.boards[name]
        brdclass = lab.classes[board.brdclass]
        return board, brdclass.arch, brdclass.attrs

    added = sorted(set(new.boards) - set(old.boards))
    removed = sorted(set(old.boards) - set(new.boards))
    changed = sorted(
        name
        for name in set(old.boards) & set(new.boards)
        if entry(old, name) != entry(new, name)
    )
    return added, changed, removed


def describe(added, changed, removed):
    """One line saying what a reload changed."""
    parts = [
        f"{what} {', '.join(names)}"
        for what, names in (
            ("added", added),
            ("changed", changed),
            ("removed", removed),
        )
        if names
    ]
    return "; ".join(parts) or "no board changed"


class BoardReloader:
    """Reloads the board file into a running server (see the module docstring).

    ``make_console(name, option)`` returns a new, not yet started, console
    service for a board's ``SerialConsole`` option; ``parent`` is the
    service the consoles run under.
    """

    def __init__(
        self,
        settings,
        option_map,
        manager,
        power,
        scripts,
        store,
        parent,
        make_console,
        metrics=None,
    ):
        self.settings = settings
        self.option_map = option_map
        self.manager = manager
        self.power = power
        self.scripts = scripts
        self.store = store
        self.parent = parent
        self.make_console = make_console
        self.metrics = metrics

    @defer.inlineCallbacks
    def reload(self):
        """Deferred[str or None]: reload; what changed, None if refused."""
        try:
            new = load_boards(self.settings.board_conf, self.option_map)
            check_lab(self.settings, new)
        except ConfigError as e:
            yield self._refused(str(e))
            return None
        old = self.manager.lab
        added, changed, removed = diff_boards(old, new)
        # unchanged boards keep their option objects, which may hold devices
        boards = {
            name: (
                old.boards[name]
                if name in old.boards and name not in changed
                else board
            )
            for name, board in new.boards.items()
        }
        new = attrs.evolve(new, boards=boards)
        try:
            held = yield self.store.sync_boards(
                new,
                board_facts(new, self.settings),
                self.settings.host_name,
                self.settings.host_url,
            )
        except BitelabError as e:
            yield self._refused(e.message)
            return None
        self.manager.lab = new
        self.power.lab = new
        self.scripts.path = new.setup_script
        for name in changed + removed:
            # changed boards got new option objects: the old ones let go
            option = old.boards[name].option(PowerOption)
            if option is not None:
                option.close()
            self.power.errors.pop(name, None)
        self._consoles(old, new, added, changed, removed, held)
        summary = describe(added, changed, removed)
        log.info(
            "board file {path} reloaded: {summary}", path=new.path, summary=summary
        )
        if self.metrics is not None:
            self.metrics.board_file_reloaded(True)
        yield self._audit("reload", summary)
        for name in added + changed:
            if self.power.has_power(name):
                self.power.read(name).addErrback(
                    lambda f, name=name: log.warn(
                        "cannot read power of {name}: {err}",
                        name=name,
                        err=f.getErrorMessage(),
                    )
                )
        return summary

    def _consoles(self, old, new, added, changed, removed, held):
        consoles = self.manager.consoles
        for name in changed + removed:
            before = old.boards[name].option(SerialConsole)
            after = (
                new.boards[name].option(SerialConsole) if name in new.boards else None
            )
            console = consoles.get(name)
            if console is None or before == after:
                continue
            why = "removed from" if name in removed else "changed in"
            console.close_viewers(f"board {name} was {why} the board file")
            del consoles[name]
            console.disownServiceParent()
        for name in added + changed:
            option = new.boards[name].option(SerialConsole)
            if option is None or name in consoles:
                continue
            console = self.make_console(name, option)
            if name in held:
                console.resume(held[name])
            consoles[name] = console
            console.setServiceParent(self.parent)

    @defer.inlineCallbacks
    def _refused(self, problem):
        log.error(
            "board file not reloaded, the server keeps its boards: {problem}",
            problem=problem,
        )
        if self.metrics is not None:
            self.metrics.board_file_reloaded(False)
        yield self._audit("reload_failed", problem)

    @defer.inlineCallbacks
    def _audit(self, action, detail):
        try:
            yield self.store.audit(action, None, None, detail)
        except BitelabError as e:
            log.error("cannot audit {action}: {error}", action=action, error=e.message)


def run_all(actions):
    """Run every action (a callable) in turn; one that fails is logged, and
    the others still run."""
    for action in actions:
        d = defer.maybeDeferred(action)
        d.addErrback(
            lambda f, action=action: log.failure(
                "SIGHUP: {action} failed", f, action=action
            )
        )
