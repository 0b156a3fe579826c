"""Compare bitelab's UCL reader with a libucl shared library.

- ``--cases``: every case of ``tests/ucl_cases.py`` through libucl, checking
  that libucl gives the value (or refusal) the case records for it, and
  through bitelab, checking bitelab's;
- otherwise: ``--count`` generated texts (token soup and document-shaped
  texts with mutations, from ``--seed``) through both readers, counting
  those read to the same value or refused by both.  Differences that a
  documented case explains (``tests/ucl_cases.py``, ``DIFFERENCES``) are
  counted apart; the others are printed, shortest first.

libucl is not part of bitelab: pass the path of a libucl shared library
you have (``--libucl PATH``).  Each libucl parse runs in a forked child, so
that a libucl crash counts as a difference instead of ending the run.

Run: ``python bench/ucl_differential.py --libucl PATH [--cases] [--count N]
[--seed S]``
"""

import argparse
import math
import os
import pickle
import random
import re
import sys
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from libucl import LibUCL, LibUCLError
from ucl_cases import DIFFERENCES, REFUSALS, VALUES, Refused

from bitelab import ucl

VARIABLES = {"HOST": "poe", "ABI": "unknown"}


def canonical(value):
    """``value`` with types made explicit (1, 1.0 and True differ; NaN
    equals NaN)."""
    if isinstance(value, dict):
        return ("object", [(k, canonical(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("array", [canonical(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def in_child(fn):
    """``fn()`` run in a forked child: ("ok", value), ("error", message) or
    ("crash", status)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        try:
            result = ("ok", canonical(fn()))
        except LibUCLError as e:
            result = ("error", e.args[0])
        os.write(wfd, pickle.dumps(result))
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    return pickle.loads(data) if data else ("crash", status)


def bitelab_result(fn):
    try:
        return ("ok", canonical(fn()))
    except ucl.UCLError as e:
        return ("error", str(e))


def expand_dir(value, directory):
    if isinstance(value, dict):
        return {k: expand_dir(v, directory) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_dir(v, directory) for v in value]
    if isinstance(value, str):
        return value.replace("{dir}", directory)
    return value


def matches(result, expected, directory, any_error=False):
    if isinstance(expected, Refused):
        return result[0] == "error" and (any_error or expected.fragment in result[1])
    return result == ("ok", canonical(expand_dir(expected, directory)))


def check_cases(libucl):
    """Run every recorded case through both readers; print and count the
    cases where either gives something else than recorded."""
    cases = VALUES + REFUSALS + DIFFERENCES
    wrong = 0
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            directory = os.path.realpath(tmp)
            for name, text in case.files.items():
                path = Path(directory, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            main = Path(directory, "main.ucl")
            main.write_text(case.text)
            read_libucl = partial(libucl.load, main, case.variables)
            read_bitelab = partial(ucl.load, main, case.variables)
            cwd = os.getcwd()
            os.chdir(directory)
            try:
                got = in_child(read_libucl)
            finally:
                os.chdir(cwd)
            mine = bitelab_result(read_bitelab)
        for who, result, expected in (
            ("libucl", got, case.libucl),
            ("bitelab", mine, case.bitelab),
        ):
            # A refusal both share words bitelab's message, not libucl's.
            shared = who == "libucl" and case.libucl is case.bitelab
            if not matches(result, expected, directory, shared):
                wrong += 1
                print(f"{case.name}: {who} gives {result!r}, recorded {expected!r}")
    print(f"{len(cases)} cases, {wrong} results differ from the record")
    return wrong


# Generated texts.

TOKENS = [
    *[
        "a",
        "b",
        "key",
        "k-1",
        "x.y",
        "/p",
        "_u",
        "1",
        "A",
        "=",
        ":",
        ";",
        ",",
        "{",
        "}",
        "[",
        "]",
        "1",
        "-2",
        "0",
        "10k",
        "10kb",
        "5s",
        "1.5",
        "0x1f",
    ],
    *[
        "1e3",
        "1min",
        "10ms",
        "2h",
        "true",
        "no",
        "NULL",
        "null",
        "nan",
        "inf",
        "$HOST",
        "${HOST}",
        "$$",
        "EOD",
        "x{y}",
    ],
    *["/dev/ttyU0", "http://h/p", "-", ".", "@", "%", "9223372036854775807"],
    '"q"',
    "'q'",
    '"a b"',
    "\\$HOST",
    "\\n",
    "\\u0041",
    " ",
    " ",
    "\t",
    "\n",
    "\n",
    "\r\n",
    "# c\n",
    "#",
    "/* c */",
    "/*",
    "*/",
    "//",
    "<<EOD\nx\nEOD\n",
    "<<EOD\n",
    '"',
    "'",
    "\\",
    "a b {",
]
WORDS = [
    "value",
    "/dev/ttyU0",
    "arm-armv7",
    "http://h/p//q",
    "a b",
    "$HOST",
    "${HOST}x",
    "$$HOST",
    "\\$HOST",
    "a\\;b",
    "true",
    "YES",
    "off",
    "null",
    "nan",
    "a#b",
    "a/*b*/c",
    "<<eod",
    "a'b",
    "./rel",
    "10",
    "-3",
    "1.5",
    "1e3",
    "0x1F",
    "10k",
    "10kb",
    "5min",
    "10ms",
    "2h",
    "1y",
    "1.2.3",
    "10abc",
    "1 2",
    "5 min",
]
STRINGS = [
    '"s"',
    '"a b"',
    '"\\t\\n\\\\ \\/"',
    '"\\u00e9"',
    '"$HOST"',
    '"${HOST}$$"',
    '"\\$HOST"',
    '""',
    "'s'",
    "'it\\'s'",
    "'a\\nb'",
    "'$HOST'",
    "''",
    '"#x"',
    "'/*'",
    "<<EOD\nline 1\n$HOST x\nEOD",
    "<<E\nE\nx\nE",
]
KEYS = ["a", "b", "key", "k-1", "x.y", "/p", "_u", "1", "A", '"q k"', '"a"', "ä"]


def token_soup(rng):
    return "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 25)))


def member(rng, depth):
    key = rng.choice(KEYS)
    roll = rng.random()
    if roll < 0.1 and depth < 3:
        return f"{key} {rng.choice(KEYS)} {obj(rng, depth + 1)}"
    if roll < 0.15:
        return rng.choice([".priority 1", '.inherit "sec"', '.priority(priority=2) ""'])
    value = rng.choice(
        [rng.choice(WORDS), rng.choice(STRINGS)]
        + ([obj(rng, depth + 1), arr(rng, depth + 1)] if depth < 3 else [])
    )
    sep = rng.choice([" = ", "=", ": ", " ", "\t", " : "])
    comment = rng.choice(["", "", "", "/* c */ "])
    return key + sep + comment + value


def arr(rng, depth):
    items = [rng.choice(WORDS + STRINGS) for _ in range(rng.randint(0, 4))]
    if depth < 3 and rng.random() < 0.3:
        items.append(obj(rng, depth + 1))
    return (
        "["
        + rng.choice([", ", ",", "\n", ";"]).join(items)
        + rng.choice(["", ","])
        + "]"
    )


def obj(rng, depth):
    body = "".join(
        rng.choice(["", " ", "\t"]) + member(rng, depth) + term(rng)
        for _ in range(rng.randint(0, 4))
    )
    return "{" + rng.choice(["", "\n", " "]) + body + "}"


def term(rng):
    return rng.choice(["\n", ";\n", ",\n", ";", ",", " ;", " \n", " # t\n", "\r\n"])


def document(rng):
    parts = ["sec { a = 1; b = [1] }\n"] if rng.random() < 0.2 else []
    parts += [member(rng, 0) + term(rng) for _ in range(rng.randint(1, 6))]
    text = "".join(parts)
    if rng.random() < 0.15:
        text = "{" + text + "}"
    if rng.random() < 0.3:
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            if chars:
                i = rng.randrange(len(chars))
                chars[i : i + 1] = rng.choice(
                    [[], [rng.choice(" \n{}[];,=:#\"'\\$/*<")], [chars[i], chars[i]]]
                )
        text = "".join(chars)
    return text


# What each documented difference looks like in a text: a difference in a
# text that shows one of these is counted as explained.
EXPLAINED = {
    "digits then x": re.compile(r"[0-9.][0-9]*[xX]"),
    "comment then blanks": re.compile(r"(\*/|#[^\n]*\n)[ \t\r\n]"),
    "bracket or separator in quotes": re.compile(r"\"[^\"\n]*[{\[;,]|'[^'\n]*[{\[;,]"),
    "bracket in a comment": re.compile(r"#[^\n]*[{\[]|/\*[^\n]*[{\[]"),
    "hash ending the text": re.compile(r"#\Z"),
    "macro ending the text": re.compile(r"\.[^\s(]*\s*(#[^\n]*)?\Z"),
    "surrogate escape": re.compile(r"\\u[dD][89abAB]"),
    "top-level brace after comment": re.compile(r"\A[\s\S]*?(#|\*/)[ \t\r\n]*\{"),
}


def explained(text):
    for name, pattern in EXPLAINED.items():
        if pattern.search(text):
            return name
    return None


def differential(libucl, count, seed, show):
    rng = random.Random(seed)
    tally = Counter()
    unexplained = []
    for i in range(count):
        text = token_soup(rng) if i % 2 else document(rng)
        mine = bitelab_result(partial(ucl.loads, text, variables=VARIABLES))
        theirs = in_child(partial(libucl.loads, text, VARIABLES))
        if mine == theirs or mine[0] == theirs[0] == "error":
            tally["same"] += 1
            continue
        reason = explained(text)
        if reason:
            tally[f"explained: {reason}"] += 1
        else:
            tally["unexplained"] += 1
            unexplained.append((text, mine, theirs))
    print(f"{count} generated texts (seed {seed}):")
    for label, n in sorted(tally.items()):
        print(f"  {label}: {n} ({100 * n / count:.2f}%)")
    unexplained.sort(key=lambda item: len(item[0]))
    for text, mine, theirs in unexplained[:show]:
        print(f"\n{text!r}\n  bitelab: {mine!r:.300}\n  libucl:  {theirs!r:.300}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--libucl", required=True, help="a libucl shared library")
    parser.add_argument("--cases", action="store_true", help="check the cases")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=20)
    args = parser.parse_args()
    libucl = LibUCL(args.libucl)
    if args.cases:
        sys.exit(1 if check_cases(libucl) else 0)
    differential(libucl, args.count, args.seed, args.show)


if __name__ == "__main__":
    main()
