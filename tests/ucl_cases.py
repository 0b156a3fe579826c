"""The libucl conformance cases: UCL texts and what libucl makes of them.

Each case is one behaviour.  ``libucl`` is the value libucl (vstakhov/libucl
at commit e4b95c6, read through its C API with no parser flags) gives for the
text, or ``Refused`` when it reports an error.  ``bitelab`` is what
bitelab's reader must give: the same, except in the cases of ``DIFFERENCES``,
where libucl's behaviour is a plain bug or needs what bitelab does not offer
and bitelab knowingly differs (README.rst lists them).

``files`` are written next to the main text, which is read as ``main.ucl``
in that directory (libucl is run from there, since it takes relative paths
from its working directory); ``{dir}`` in a value stands for the directory.
``variables`` are defined for the parse.

``tests/test_ucl_conformance.py`` checks bitelab against every case;
``bench/ucl_differential.py --libucl PATH --cases`` checks libucl against
the ``libucl`` values.
"""

import math


class Refused:
    """libucl (or bitelab) refuses the text; bitelab's message contains
    ``fragment`` and points at ``line`` and ``column``."""

    def __init__(self, fragment, line=None, column=None):
        self.fragment = fragment
        self.line = line
        self.column = column

    def __repr__(self):
        return f"Refused({self.fragment!r}, {self.line}, {self.column})"


class Case:
    """One behaviour: a text and what libucl and bitelab make of it."""

    def __init__(self, name, text, libucl, bitelab=None, files=None, variables=None):
        # A refusal shared by both readers names bitelab's message; in a
        # difference, libucl's refusal names libucl's.
        self.name = name
        self.text = text
        self.libucl = libucl
        self.bitelab = libucl if bitelab is None else bitelab
        self.files = files or {}
        self.variables = variables or {}

    def __repr__(self):
        return f"Case({self.name!r})"


NAN = math.nan
HOST = {"HOST": "poe"}

# Texts libucl reads, and bitelab reads to the same value.
VALUES = [
    # Comments: only '#' and '/* */'.
    Case("double-slash-starts-a-key", "// x", {"//": "x"}),
    Case("double-slash-after-a-value", "a = 1 // two", {"a": "1 // two"}),
    Case("hash-comment", "a = 1 # one\nb = 2", {"a": 1, "b": 2}),
    Case("nested-block-comments", "a /* x /* y */ z */ = 1", {"a": 1}),
    Case("hash-ending-the-text-after-a-value", "a = 1 #", {"a": 1}),
    Case("comment-between-key-and-value", "a = /* c */ 1", {"a": 1}),
    Case("comment-line-between-key-and-value", "a =\n# c\n1", {"a": 1}),
    # Numbers and their suffixes.
    Case(
        "size-suffix",
        "a = 10k; b = 10kb; c = 1.5k",
        {"a": 10000, "b": 10240, "c": 1500.0},
    ),
    Case(
        "time-suffix", "a = 10s; b = 5min; c = 10ms", {"a": 10.0, "b": 300.0, "c": 0.01}
    ),
    Case("suffix-then-blank-is-a-string", "a 1k \nb = 2", {"a": "1k", "b": 2}),
    Case("suffix-then-blank-separator", "timeout = 10s ;", {"timeout": "10s"}),
    Case(
        "suffix-then-blank-close",
        "a { t = 5s } b [ 10k ]",
        {"a": {"t": "5s"}, "b": ["10k"]},
    ),
    Case("number-then-blank-is-a-number", "a = 2 ;\nb [ 3 ]", {"a": 2, "b": [3]}),
    Case("number-then-block-comment-is-a-string", "port = 2 /* PoE */", {"port": "2"}),
    Case("number-then-hash-comment", "port = 2 # PoE", {"port": 2}),
    Case("int64-min", "a = -9223372036854775808", {"a": -9223372036854775808}),
    Case("int64-max", "a = 9223372036854775807", {"a": 9223372036854775807}),
    Case("hex", "a = 0x1F; b = -0x10; c = 0x1e5", {"a": 31, "b": -16, "c": 485}),
    Case("hex-keeps-integer-with-time-suffix", "a = 0x10s", {"a": 16}),
    Case("hex-with-size-suffix", "a = 0x10k; b = 0x2kb", {"a": 16000, "b": 2048}),
    Case("long-number-is-a-string", "a = " + "1" * 130, {"a": "1" * 130}),
    Case(
        "float-forms", "a = 5.; b = 1e3; c = -0.25", {"a": 5.0, "b": 1000.0, "c": -0.25}
    ),
    Case(
        "not-numbers-either",
        "a = 0x1.5; b = -.5; c = 1e5e; d = 1.5.; e = 1kb5; f = 1ms5",
        {"a": "0x1.5", "b": "-.5", "c": "1e5e", "d": "1.5.", "e": "1kb5", "f": "1ms5"},
    ),
    Case(
        "not-numbers",
        "a = 1.2.3; b = 1e; c = -x; d = 10abc",
        {"a": "1.2.3", "b": "1e", "c": "-x", "d": "10abc"},
    ),
    Case(
        "nan-and-inf",
        "a = nan; b = inf; c = NaN",
        {"a": NAN, "b": math.inf, "c": "NaN"},
    ),
    # Words, booleans, null.
    Case(
        "booleans-any-case",
        "a = YES; b = Off; c = true",
        {"a": True, "b": False, "c": True},
    ),
    Case("null-is-lowercase", "a = null; b = NULL", {"a": None, "b": "NULL"}),
    Case("bare-word-keeps-inner-blanks", "a = hello  world  ;", {"a": "hello  world"}),
    Case("bare-word-balanced-brackets", "a = x[1]{y}", {"a": "x[1]{y}"}),
    Case("bare-word-escapes", r"a = x\;y\n", {"a": "x;y\n"}),
    Case(
        "bare-word-short-unicode-escapes",
        r"a = \u12zz; b = x\u1",
        {"a": "\u0120", "b": "xu"},
    ),
    Case("bare-word-final-backslash", "a = slash\\", {"a": "slash\\"}),
    # Strings.
    Case(
        "double-quoted-escapes",
        r'a = "q\" \\ \/ \t \u00e9 \q"',
        {"a": 'q" \\ / \t é q'},
    ),
    Case("single-quoted", "a = 'it\\'s \\n'", {"a": "it's \\n"}),
    Case("single-quoted-line-join", "a = 'jo\\\nined'", {"a": "joined"}),
    Case("single-quoted-crlf-join", "a = 'jo\\\r\nined'", {"a": "joined"}),
    Case(
        "heredoc",
        "a = <<EOD\nline 1\nline 2\nEOD\nb = 1",
        {"a": "line 1\nline 2", "b": 1},
    ),
    Case(
        "heredoc-terminator-then-separator", "a = [<<END\nx\nEND,\n2]", {"a": ["x", 2]}
    ),
    Case("heredoc-too-short-is-a-word", "a = <<E", {"a": "<<E"}),
    Case("heredoc-lowercase-is-a-word", "a = <<eod", {"a": "<<eod"}),
    # Keys and separators.
    Case("separators", "a = 1; b: 2, c 3\nd = 4;;", {"a": 1, "b": 2, "c": 3, "d": 4}),
    Case("quoted-key", '"a b" = 1', {"a b": 1}),
    Case("key-then-blank-then-line-end-is-null", "a \n", {"a": None}),
    Case("quoted-key-then-line-end-is-null", '"a"\n', {"a": None}),
    Case("key-equals-line-end-is-null", "a =\n", {"a": None}),
    Case("key-then-blank-value-on-next-line", "a \n value", {"a": "value"}),
    Case(
        "repeated-keys-are-an-implicit-array",
        "a = 1; a = 2; b { c = 1 } b { c = 2 }",
        {"a": [1, 2], "b": [{"c": 1}, {"c": 2}]},
    ),
    Case(
        "nested-key-shorthand",
        'a b { c = 1 } s "n" { }',
        {"a": {"b": {"c": 1}}, "s": {"n": {}}},
    ),
    Case("shorthand-with-array", "a b [1, 2]", {"a": {"b": [1, 2]}}),
    Case(
        "shorthand-closes-with-its-braces",
        "x { a b { c = 1 } d = 2 }",
        {"x": {"a": {"b": {"c": 1}}, "d": 2}},
    ),
    Case(
        "separator-after-shorthand-key-then-word",
        "a b = c { }",
        {"a": {"b": {"c": {}}}},
    ),
    Case("value-with-blanks-is-not-shorthand", "a b c", {"a": "b c"}),
    # Top level.
    Case("braced-top-level", "{ a = 1 }", {"a": 1}),
    Case("comment-before-closing-brace", "a { # c\n}", {"a": {}}),
    Case("text-after-top-level-braces-is-ignored", "{ a = 1 } b = 2 }", {"a": 1}),
    Case("top-level-array", "[1, 2] x", [1, 2]),
    Case("empty-text", "", {}),
    Case("comment-then-braces", "# c\n{ a = 1 }", {"a": 1}),
    # Variables.
    Case(
        "variables",
        'a = $HOST:${HOST}; b = "${HOST}x"; c = <<E\n$HOST\nE',
        {"a": "poe:poe", "b": "poex", "c": "poe"},
        variables=HOST,
    ),
    Case("escaped-dollar-in-bare-word", r"a = \$HOST", {"a": "$HOST"}, variables=HOST),
    Case(
        "escaped-dollar-in-quotes-expands",
        r'a = "\$HOST"',
        {"a": "poe"},
        variables=HOST,
    ),
    Case("single-quotes-do-not-expand", "a = '$HOST'", {"a": "$HOST"}, variables=HOST),
    Case(
        "double-dollar",
        "a = $$HOST $HOST; b = $$X",
        {"a": "$HOST poe", "b": "$$X"},
        variables=HOST,
    ),
    Case(
        "first-variable-wins", "a = $ABC", {"a": "1BC"}, variables={"A": "1", "AB": "2"}
    ),
    Case(
        "unknown-variable-stays",
        "a = ${NOPE}$NOPE $HOST",
        {"a": "${NOPE}$NOPE poe"},
        variables=HOST,
    ),
    Case("keys-are-not-expanded", '"$HOST" = 1', {"$HOST": 1}, variables=HOST),
    Case(
        "builtin-variables",
        "f = $FILENAME; d = ${CURDIR}/x",
        {"f": "{dir}/main.ucl", "d": "{dir}/x"},
    ),
    # Macros.
    Case(
        "include", '.include "a.ucl"\nb = 2', {"a": 1, "b": 2}, files={"a.ucl": "a = 1"}
    ),
    Case(
        "include-curdir", '.include "$CURDIR/a.ucl"', {"a": 1}, files={"a.ucl": "a = 1"}
    ),
    Case(
        "include-into-object",
        'o { .include "a.ucl"; z = 1 }',
        {"o": {"a": 1, "z": 1}},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-braced-file",
        '.include "a.ucl"',
        {"a": 1},
        files={"a.ucl": "{ a = 1 }"},
    ),
    Case(
        "include-repeated-keys",
        'a = 0\n.include "a.ucl"',
        {"a": [0, 1]},
        files={"a.ucl": "a = 1"},
    ),
    Case("include-try-missing", '.include(try=true) "nope.ucl"\na = 1', {"a": 1}),
    Case(
        "include-priority-higher-replaces",
        'a = 0\n.include(priority=1) "a.ucl"',
        {"a": 1},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-priority-lower-is-dropped",
        '.include(priority=1) "a.ucl"\na = 0',
        {"a": 1},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-duplicate-rewrite",
        'a = 0\nb { x = 1 }\n.include(duplicate="rewrite") "a.ucl"',
        {"a": 1, "b": {"y": 2}},
        files={"a.ucl": "a = 1\nb { y = 2 }"},
    ),
    Case(
        "include-duplicate-merge",
        'a = 0\nb { x = 1 }\nc = [1]\n.include(duplicate="merge") "a.ucl"',
        {"a": [0, 1], "b": {"x": 1, "y": 2}, "c": [1, 2]},
        files={"a.ucl": "a = 1\nb { y = 2 }\nc = [2]"},
    ),
    Case(
        "include-duplicate-append",
        'b { x = 1 }\n.include(duplicate="append") "a.ucl"',
        {"b": [{"x": 1}, {"y": 2}]},
        files={"a.ucl": "b { y = 2 }"},
    ),
    Case(
        "include-duplicate-error",
        'a = 0\n.include(duplicate="error") "a.ucl"',
        Refused("duplicate key 'a'", 1, 1),
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-key",
        '.include(key="k") "a.ucl"',
        {"k": {"a": 1}},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-prefix-from-file-name",
        '.include(prefix=true) "part.conf"',
        {"part": {"a": 1}},
        files={"part.conf": "a = 1"},
    ),
    Case(
        "include-key-array-target",
        'k = [0]\n.include(key="k", target="array") "a.ucl"\n.include(key="n", target="array") "a.ucl"',
        {"k": [0, {"a": 1}], "n": [{"a": 1}]},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-key-array-over-object",
        'k { z = 0 }\n.include(key="k", target="array") "a.ucl"',
        {"k": [{"z": 0}, {"a": 1}]},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-key-into-existing-object",
        'k { z = 0 }\n.include(key="k") "a.ucl"',
        {"k": {"z": 0, "a": 1}},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-key-over-a-scalar",
        'k = 0\n.include(key="k") "a.ucl"',
        Refused("cannot include into key 'k'"),
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-glob",
        '.include(glob=true) "d/*.ucl"',
        {"a": [1, 2]},
        files={"d/1.ucl": "a = 1", "d/2.ucl": "a = 2", "d/x.txt": "a = 3"},
    ),
    Case(
        "include-argument-abbreviated",
        '.include(pri=1) "a.ucl"\na = 0',
        {"a": 1},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-argument-wrong-type-ignored",
        '.include(try="yes") "nope.ucl"',
        Refused("nope.ucl"),
    ),
    Case(
        "include-empty-arguments",
        '.include() "a.ucl"',
        {"a": 1},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-path",
        '.include(path=["d"]) "a.ucl"\n.include "b.ucl"',
        {"a": 1, "b": 2},
        files={"d/a.ucl": "a = 1", "d/b.ucl": "b = 2"},
    ),
    Case(
        "macro-value-in-braces", ".include {a.ucl}", {"a": 1}, files={"a.ucl": "a = 1"}
    ),
    Case(
        "macro-arguments-not-an-object",
        '.include([1]) "a.ucl"',
        {"a": 1},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "macro-arguments-quoted-parens",
        '.include(key="a(b)") "a.ucl"',
        {"a(b)": {"a": 1}},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "try-include",
        '.try_include "a.ucl"\nb = 2',
        {"a": 1, "b": 2},
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "include-filevars",
        '.include "d/a.ucl"',
        {"c": "{dir}/d", "f": "{dir}/d/a.ucl"},
        files={"d/a.ucl": "c = $CURDIR; f = $FILENAME"},
    ),
    Case(
        "include-single-quotes-are-part-of-the-name",
        ".include 'a.ucl'",
        Refused("'a.ucl'"),
        files={"a.ucl": "a = 1"},
    ),
    Case("include-missing", '.include "nope.ucl"', Refused("nope.ucl", 1, 1)),
    Case(
        "priority-macro",
        "a = 0\n.priority 1\na = 1\nb = 1\n.priority 0\nb = 0",
        {"a": 1, "b": 1},
    ),
    Case(
        "priority-macro-argument",
        '.priority(priority=2) ""\na = 2\n.priority 1\na = 1',
        {"a": 2},
    ),
    Case("priority-masked-to-four-bits", "a = 1\n.priority 16\na = 2", {"a": [1, 2]}),
    Case("priority-invalid", ".priority x", Refused("invalid priority", 1, 1)),
    Case("priority-empty", '.priority ""', Refused("missing priority", 1, 1)),
    Case(
        "inherit",
        'd { a = 1; b = 2 }\nm { .inherit "d"\nb = 3 }',
        {"d": {"a": 1, "b": 2}, "m": {"a": 1, "b": 3}},
    ),
    Case(
        "inherit-nested",
        'd { o { x = 1 }; l = [1, { y = 2 }]; a = 1; a = 2; m { p = 1 }; m { q = 2 } }\nc { .inherit "d" }',
        {
            "d": {
                "o": {"x": 1},
                "l": [1, {"y": 2}],
                "a": [1, 2],
                "m": [{"p": 1}, {"q": 2}],
            },
            "c": {"o": {"x": 1}, "l": [1, {"y": 2}], "a": [1, 2], "m": {"p": 1}},
        },
    ),
    Case(
        "inherit-keeps-own-keys",
        'd { a = 1 }\nm { a = 0\n.inherit "d" }',
        {"d": {"a": 1}, "m": {"a": 0}},
    ),
    Case(
        "inherit-replace-appends",
        'd { a = 1 }\nm { a = 0\n.inherit(replace=true) "d" }',
        {"d": {"a": 1}, "m": {"a": [0, 1]}},
    ),
    Case("inherit-missing", '.inherit "nope"', Refused("nope", 1, 1)),
    Case("load", '.load(key="k") "f.txt"', {"k": "  12\n"}, files={"f.txt": "  12\n"}),
    Case(
        "load-trim-escape",
        '.load(key="k", trim=true, escape=true) "f.txt"',
        {"k": 'a\\n\\"b\\"'},
        files={"f.txt": ' a\n"b"\n '},
    ),
    Case(
        "load-int",
        '.load(key="k", target="int") "f.txt"',
        {"k": 12},
        files={"f.txt": "  12abc"},
    ),
    Case(
        "load-priority",
        '.load(key="k", priority=2) "f.txt"\nk = x',
        {"k": "v"},
        files={"f.txt": "v"},
    ),
    Case("load-try-missing", '.load(key="k", try=true) "nope.txt"\na = 1', {"a": 1}),
    Case(
        "load-empty-file-gives-nothing",
        '.load(key="k") "f.txt"',
        {},
        files={"f.txt": ""},
    ),
    Case("load-missing", '.load(key="k") "nope.txt"', Refused("cannot load", 1, 1)),
    Case("load-empty-name", '.load(key="k") ""', Refused("missing file name", 1, 1)),
    Case("load-needs-key", '.load "f.txt"', Refused("key"), files={"f.txt": "x"}),
    Case(
        "load-existing-key",
        'k = 1\n.load(key="k") "f.txt"',
        Refused("already exists"),
        files={"f.txt": "x"},
    ),
    Case(
        "macro-argument-may-include",
        '.include(.include "args.ucl") "a.ucl"\na = 0',
        {"a": 1},
        files={"args.ucl": "priority = 1", "a.ucl": "a = 1"},
    ),
    Case("unknown-macro", ".frob x", Refused("unknown macro .frob", 1, 1)),
]

# Texts libucl refuses, and bitelab refuses too.
REFUSALS = [
    Case("key-touching-brace", "a{}", Refused("a space is needed", 1, 2)),
    Case("key-touching-bracket", "a[]", Refused("a space is needed", 1, 2)),
    Case(
        "key-then-line-end",
        "key\n value",
        Refused("must start on the key's line", 1, 4),
    ),
    Case("key-then-comment", "key# c\n value", Refused("unexpected '#' in key", 1, 4)),
    Case("separator-in-shorthand", "a b = { }", Refused("takes no '='", 1, 7)),
    Case("crlf-heredoc-opener", "a = <<EOD\r\nx\r\nEOD\r\n", Refused("CRLF", 1, 10)),
    Case(
        "crlf-heredoc-terminator",
        "a = <<EOD\nx\r\nEOD\r\n",
        Refused("never closed", 1, 5),
    ),
    Case("heredoc-needs-a-line", "b = <<X\nX;", Refused("never closed", 1, 5)),
    Case(
        "int64-max-plus-one", "a = 9223372036854775808", Refused("out of range", 1, 5)
    ),
    Case("hex-out-of-range", "a = 0xffffffffffffffff", Refused("out of range", 1, 5)),
    Case("float-overflow", "a = 1e999", Refused("out of range", 1, 5)),
    Case("float-underflow", "a = 1e-310", Refused("out of range", 1, 5)),
    Case(
        "unterminated-string", 'a = "abc', Refused("unterminated double-quoted", 1, 5)
    ),
    Case("newline-in-string", 'a = 1\nb = "ab\ncd"', Refused("newline inside", 2, 8)),
    Case("tab-in-string", 'a = "x\ty"', Refused("control character", 1, 7)),
    Case("bad-unicode-escape", 'a = "\\u12"', Refused("invalid \\u escape", 1, 10)),
    Case(
        "unterminated-comment", "a = 1\n/* open", Refused("unterminated comment", 2, 1)
    ),
    Case(
        "quote-inside-comment-hides-its-end",
        '/* " */ a = 1',
        Refused("unterminated comment", 1, 1),
    ),
    Case("heredoc-opener-at-end", "a = <<EOD", Refused("never closed", 1, 5)),
    Case(
        "escape-at-end-of-text", 'a = "x\\', Refused("unterminated double-quoted", 1, 5)
    ),
    Case("unclosed-brace", "a {\n  b = 1\n", Refused("'{' is never closed", 1, 3)),
    Case("unclosed-bracket", "a = [1, 2", Refused("'[' is never closed", 1, 5)),
    Case("stray-brace", "a = 1\n}", Refused("without a matching", 2, 1)),
    Case("wrong-closer", "a = [1 }", Refused("inside an array", 1, 8)),
    Case("missing-value", "a = ;", Refused("missing value for key 'a'", 1, 5)),
    Case(
        "missing-array-value", "a = [,1]", Refused("missing value in the array", 1, 6)
    ),
    Case("key-at-end", "a", Refused("missing value for key 'a'", 1, 2)),
    Case(
        "key-and-separator-at-end", "a = ", Refused("missing value for key 'a'", 1, 5)
    ),
    Case(
        "key-then-comment-at-end", "a # c", Refused("missing value for key 'a'", 1, 6)
    ),
    Case(
        "value-then-hash-at-end",
        "a #",
        Refused("missing value for key 'a', found '#'", 1, 3),
    ),
    Case("missing-delimiter", 'a = "x" b = 1', Refused("expected ';', ','", 1, 9)),
    Case("double-separator", "a == 1", Refused("unexpected '='", 1, 4)),
    Case("empty-key", '"" = 1', Refused("empty keys", 1, 1)),
    Case("key-start", "= 1", Refused("expected a key", 1, 1)),
    Case(
        "merge-array-into-object",
        'a { x = 1 }\n.include(duplicate="merge") "a.ucl"',
        Refused("cannot merge an array", 1, 3),
        files={"a.ucl": "a [1]"},
    ),
    Case(
        "include-path-missing",
        '.include(path=["d"]) "nope.ucl"',
        Refused("cannot find 'nope.ucl'", 1, 1),
    ),
    Case(
        "included-file-closes-includer",
        'o { .include "a.ucl"\nx = 1 }',
        Refused("closes nothing opened in this file", 1, 7),
        files={"a.ucl": "a = 1 }"},
    ),
    Case(
        "included-file-unclosed-brace",
        '.include "a.ucl"\nb = 2',
        Refused("'{' is never closed", 1, 1),
        files={"a.ucl": "{ a = 1"},
    ),
    Case(
        "macro-value-braces-unclosed", ".include {a.ucl", Refused("never closed", 1, 10)
    ),
    Case("includes-itself", '.include "main.ucl"', Refused("includes itself", 1, 1)),
]

# Where bitelab knowingly differs from libucl: ``libucl`` is libucl's value
# (or refusal), ``bitelab`` bitelab's.
DIFFERENCES = [
    Case(
        "digits-then-x-is-not-hex",
        "a = 1x5; b = 00x5",
        {"a": 5, "b": 5},
        {"a": "1x5", "b": "00x5"},
    ),
    Case(
        "try-include-missing-ends-libucl-parse",
        '.try_include "nope.ucl"\na = 1',
        {},
        {"a": 1},
    ),
    Case(
        "comment-after-bracket-keeps-blanks",
        "a = [ # c\n  x ]",
        {"a": ["  x"]},
        {"a": ["x"]},
    ),
    Case("comment-then-blanks-before-value", "a =\n  # c\n  1", {"a": "  1"}, {"a": 1}),
    Case(
        "comment-alone-in-array",
        "a = [ # c\n ]",
        Refused("string value must not be empty"),
        {"a": []},
    ),
    Case(
        "shorthand-look-ahead-sees-quotes",
        'a "x{y"',
        Refused("unfinished key"),
        {"a": "x{y"},
    ),
    Case(
        "shorthand-look-ahead-stops-in-quotes",
        'a "," { }',
        Refused("delimiter is missing"),
        {"a": {",": {}}},
    ),
    Case(
        "shorthand-look-ahead-sees-comments",
        "a b # {\n",
        Refused("unfinished key"),
        {"a": "b"},
    ),
    Case(
        "hash-ending-the-text",
        "a = 1;\n.priority 0\n#",
        Refused("key must begin with a letter"),
        {"a": 1},
    ),
    Case(
        "braced-include-in-braces",
        '{ .include "a.ucl" }',
        Refused("not opened with {"),
        {"a": 1},
        files={"a.ucl": "{ a = 1 }"},
    ),
    Case(
        "braced-include-in-object",
        'o { .include "a.ucl" }',
        Refused("not opened with {"),
        {"o": {"a": 1}},
        files={"a.ucl": "{ a = 1 }"},
    ),
    Case(
        "top-level-brace-after-comment-and-blank",
        "\n# c\n{ a = 1 }",
        Refused("key must begin with a letter"),
        {"a": 1},
    ),
    Case(
        "top-level-brace-after-block-comment",
        "/* c */ { a = 1 }",
        Refused("key must begin with a letter"),
        {"a": 1},
    ),
    Case(
        "surrogate-pair",
        r'a = "\ud83d\ude00"',
        {"a": "\udced\udca0\udcbd\udced\udcb8\udc80"},
        {"a": "\U0001f600"},
    ),
    Case(
        "lone-surrogate",
        r'a = "x\ud800"',
        {"a": "x\udced\udca0\udc80"},
        {"a": "x\ufffd"},
    ),
    Case(
        "byte-order-mark",
        "\ufeffa = 1",
        {"\ufeffa": 1},
        Refused("byte-order mark", 1, 1),
    ),
    Case(
        "relative-include-from-the-file",
        '.include "d/x.ucl"',
        Refused("cannot open file"),
        {"a": 1},
        files={"d/x.ucl": '.include "a.ucl"', "d/a.ucl": "a = 1"},
    ),
    Case(
        "macro-ending-the-text",
        ".include",
        {},
        Refused("missing argument after .include", 1, 1),
    ),
    Case(
        "unknown-macro-ending-the-text",
        ".frob",
        {},
        Refused("unknown macro .frob", 1, 1),
    ),
    Case(
        "glob-without-match",
        '.include(glob=true) "d/*.ucl"\na = 1',
        {},
        Refused("no file matches", 1, 1),
    ),
    Case(
        "load-unknown-target",
        '.load(key="k", target="list") "f.txt"',
        {},
        Refused("unknown .load target", 1, 1),
        files={"f.txt": "x"},
    ),
    Case(
        "size-suffix-overflow",
        "a = 9223372036854775807k",
        {"a": -1000},
        Refused("out of range", 1, 5),
    ),
    Case(
        "macro-arguments-see-the-variables",
        '.include(key="$HOST") "a.ucl"',
        {"$HOST": {"a": 1}},
        {"poe": {"a": 1}},
        files={"a.ucl": "a = 1"},
        variables=HOST,
    ),
    Case(
        "included-array",
        '.include "a.ucl"',
        Refused("unexpected terminating symbol"),
        Refused("must hold keys, not an array", 1, 1),
        files={"a.ucl": "[1]"},
    ),
    Case(
        "include-path-tries-every-directory",
        '.include(path=["d", "e"]) "a.ucl"',
        Refused("cannot open file"),
        {"a": 1},
        files={"e/a.ucl": "a = 1"},
    ),
    # libucl built without OpenSSL skips the check; built with it, it
    # refuses a file it has no trusted key for.
    Case(
        "signatures",
        '.includes "a.ucl"',
        {"a": 1},
        Refused("signature", 1, 1),
        files={"a.ucl": "a = 1"},
    ),
    Case(
        "url-include",
        '.include(url=true) "http://example.invalid/a.ucl"',
        Refused("URL support is disabled"),
        Refused("URL", 1, 1),
    ),
]
