"""Tests for bitelab.ucl, the libucl-compatible UCL reader."""

import json
import math
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitelab.ucl import MAX_DEPTH, UCLError, load, loads
from support.seed import SEED

SEED_VALUE = {
    "setup_script": "/ztank/prog/board_script",
    "classes": {
        "cora-z7s": {"arch": "arm-armv7"},
        "pine64-a64-lts": {"arch": "arm64-aarch64"},
    },
    "boards": [
        {
            "name": "cora-1",
            "brdclass": "cora-z7s",
            "options": [{"cls": "snmppower", "host": "poe", "port": 2}],
        },
        {
            "name": "a64lts-1",
            "brdclass": "pine64-a64-lts",
            "options": [
                {"cls": "etheriface", "val": "awg0.103"},
                {"cls": "serialconsole", "val": "/dev/ttyU0"},
                {"cls": "snmppower", "host": "poe", "port": 3},
            ],
        },
    ],
}


def test_seed_example():
    """The board file of the design parses to exactly the expected dict."""
    assert loads(SEED) == SEED_VALUE


def test_seed_example_keeps_key_order():
    """Keys come back in file order, at every level."""
    result = loads(SEED)
    assert list(result) == ["setup_script", "classes", "boards"]
    assert list(result["classes"]) == ["cora-z7s", "pine64-a64-lts"]
    assert list(result["boards"][1]) == ["name", "brdclass", "options"]


def test_load_reads_a_file(tmp_path):
    """load() reads a file from disk and gives the same result as loads()."""
    path = tmp_path / "boards.ucl"
    path.write_text(SEED)
    assert load(path) == SEED_VALUE
    assert load(str(path)) == SEED_VALUE


# Key/value forms and separators


@pytest.mark.parametrize(
    "text",
    [
        "a = 1; b = x",
        "a: 1, b: x",
        "a 1\nb x",
        "a=1;b=x;",
        "a = 1,\nb = x,\n",
        "a = 1\n\n\nb = x\n",
        "a = 1;;; b = x;;",
        '"a": 1, "b": "x"',
        '{"a": 1, "b": "x"}',
        "{ a = 1; b = x }",
        "a =\n  1\nb:\nx",
        "a 1 # one\nb x /* ex */",
    ],
)
def test_key_value_forms(text):
    """'=', ':' and a space all separate key from value; ';', ',' and newlines
    (repeated or trailing) separate members; braces round the top are
    optional."""
    assert loads(text) == {"a": 1, "b": "x"}


def test_nested_objects_and_arrays_without_separators():
    """'key { }' and 'key [ ]' need no '=' and no separator after the
    closing bracket."""
    text = "a { b = 1 } c [1, 2] d { } e [] f = 3"
    assert loads(text) == {"a": {"b": 1}, "c": [1, 2], "d": {}, "e": [], "f": 3}


def test_trailing_separators_in_arrays_and_objects():
    """Trailing ',' or ';' before a closing bracket are accepted."""
    assert loads("a = [1, 2, ]; b = { c = 1; }; d = [ 3; ]") == {
        "a": [1, 2],
        "b": {"c": 1},
        "d": [3],
    }


def test_array_elements_separated_by_newlines():
    """Newlines separate array elements just as commas do."""
    assert loads("a [\n  1\n  two\n  { x = 3 }\n]") == {"a": [1, "two", {"x": 3}]}


def test_empty_and_comment_only_documents():
    """Empty text, whitespace, comments or empty braces give an empty dict."""
    for text in ["", "  \n\t\n", "# nothing\n", "/* */", "{}", "{ } ;\n# end"]:
        assert loads(text) == {}


def test_json_document():
    """Plain JSON is UCL and parses to the same value as json.loads."""
    doc = {"a": [1, -2, 3.5, True, False, None, "x"], "b": {"c": {"d": []}}}
    text = json.dumps(doc, indent=2)
    assert loads(text) == json.loads(text) == doc


# Comments


def test_hash_comments():
    """'#' comments out the rest of the line, after keys or values."""
    text = "# head\na = 1 # one\n# full line\nb = 2 # two\nc # why\n = 3\n"
    assert loads(text) == {"a": 1, "b": 2, "c": 3}


def test_nested_block_comments():
    """'/* */' comments nest, span lines and may sit between tokens."""
    text = (
        "a /* x */ = /* y\n/* nested */\n still comment */ 1; /* /* /* */ */ */ b = 2"
    )
    assert loads(text) == {"a": 1, "b": 2}


def test_block_comment_ignores_markers_in_quotes():
    """As in libucl, '*/' inside double quotes within a comment does not end it."""
    assert loads('/* a "*/" b */ k = v') == {"k": "v"}


def test_comment_markers_inside_values():
    """'//' inside a bare word (a URL) stays; '#' ends a bare word; comment
    markers inside quoted strings are text."""
    text = "u = http://h/p//q\nv = a#b\nw = \"/* # // */\"\nx = '#'"
    assert loads(text) == {"u": "http://h/p//q", "v": "a", "w": "/* # // */", "x": "#"}


# Strings


@pytest.mark.parametrize(
    "word",
    [
        "/ztank/prog/board_script",
        "awg0.103",
        "arm-armv7",
        "cora-z7s",
        "/dev/ttyU0",
        "a64lts-1",
        "x_y.z",
        "1.2.3",
        "10abc",
        "0x",
        "-",
        "-x",
        ".5",
        "+5",
        "1e",
        "5e+",
        "0xZ",
        "1x5",
        "10 apples",
        "TRUEISH",
        "Null",
        "ä-ö",
    ],
)
def test_bare_words_are_strings(word):
    """Unquoted words that are not numbers, booleans or null stay strings,
    including ones that only start like a number."""
    assert loads(f"v = {word};") == {"v": word}


def test_bare_word_spaces_and_brackets():
    """Bare words keep inner spaces and balanced brackets, drop trailing
    spaces, and end at an unbalanced closing bracket."""
    text = "a = hello  world  ;\nb = x[1]{y}\nc { d = e}"
    assert loads(text) == {"a": "hello  world", "b": "x[1]{y}", "c": {"d": "e"}}


def test_bare_word_escapes():
    """A backslash in a bare word escapes a separator and JSON escapes apply."""
    assert loads(r"a = x\;y\u0041\n; b = c") == {"a": "x;yA\n", "b": "c"}


def test_double_quoted_escapes():
    """Double-quoted strings take JSON escapes, \\u including surrogate pairs;
    unknown escapes keep the character, as libucl does."""
    text = r'a = "q\" b\\ s\/ \b\f\n\r\t \u00e9 \ud83d\ude00 \q"'
    assert loads(text) == {"a": 'q" b\\ s/ \b\f\n\r\t é \U0001f600 q'}


def test_lone_surrogate_escape_is_replaced():
    """A lone \\uD800 becomes U+FFFD, so the value is always encodable."""
    assert loads(r'a = "x\ud800y"') == {"a": "x\ufffdy"}


def test_single_quoted_strings():
    """Single quotes: \\' is a quote, backslash-newline vanishes, other
    backslashes stay, newlines and '$' are literal."""
    text = "a = 'it\\'s \\n \\\\ $CURDIR';\nb = 'two\nlines';\nc = 'jo\\\nined'"
    assert loads(text) == {
        "a": "it's \\n \\\\ $CURDIR",
        "b": "two\nlines",
        "c": "joined",
    }


def test_quoted_values_are_never_numbers_or_booleans():
    """Quoting keeps '1', 'true' and 'null' as strings."""
    assert loads('a = "1"; b = \'true\'; c = "null"') == {
        "a": "1",
        "b": "true",
        "c": "null",
    }


def test_quoted_keys():
    """Keys may be JSON strings, holding characters bare keys cannot."""
    assert loads('"a b" = 1; "x\\ty" { "=" = 2 }') == {"a b": 1, "x\ty": {"=": 2}}


def test_heredoc():
    """A heredoc keeps its lines verbatim, without the final newline."""
    text = 'a = <<EOD\n  line "1"; # not a comment\nline 2\nEOD\nb = 2\n'
    assert loads(text) == {"a": '  line "1"; # not a comment\nline 2', "b": 2}


def test_heredoc_terminator_followed_by_separator():
    """The terminator may be followed by ';' or ',' as in libucl, and a line
    merely starting with the terminator does not end the heredoc."""
    text = "a = [<<END\nENDING\nEND,\n2]; b = <<X\n\nX;"
    assert loads(text) == {"a": ["ENDING", 2], "b": ""}


def test_heredoc_needs_uppercase_terminator_and_newline():
    """'<<eod' or '<<EOD' followed by more text is a plain bare word."""
    assert loads("a = <<eod\nb = <<EOD x\n") == {"a": "<<eod", "b": "<<EOD x"}


# Numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("-17", -17),
        ("007", 7),
        ("1.5", 1.5),
        ("-0.25", -0.25),
        ("5.", 5.0),
        ("1e3", 1000.0),
        ("2.5E-2", 0.025),
        ("1.e2", 100.0),
        ("0x1F", 31),
        ("0XfF", 255),
        ("-0x10", -16),
        ("0x1e5", 485),
        ("10k", 10_000),
        ("10K", 10_000),
        ("3m", 3_000_000),
        ("2g", 2_000_000_000),
        ("1.5k", 1500.0),
        ("10kb", 10_240),
        ("2MB", 2 * 1024**2),
        ("1gb", 1024**3),
        ("1.5kb", 1024),
        ("0x10k", 16_000),
        ("0x2kb", 2048),
        ("-3k", -3000),
        ("10ms", 0.01),
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("5min", 300.0),
        ("5MIN", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1y", 31536000.0),
        ("-2s", -2.0),
        ("2ks", 2000.0),
        ("9223372036854775807", 2**63 - 1),
    ],
)
def test_numbers(text, expected):
    """Integers, floats, hex and libucl's size and time suffixes give the
    values (and the int/float types) libucl gives."""
    for form in (f"v = {text}", f"v = {text};", f"v = [{text}]", f"v = {text}# c"):
        value = loads(form)["v"]
        if isinstance(value, list):
            (value,) = value
        assert value == expected
        assert type(value) is type(expected)


def test_number_before_closing_bracket():
    """A number right before a closing bracket, or a plain number before
    blanks and one, is a number."""
    assert loads("a { p = 2 } b [ 10k] c { t = 5s}") == {
        "a": {"p": 2},
        "b": [10_000],
        "c": {"t": 5.0},
    }


def test_special_floats():
    """libucl's bare 'nan' and 'inf' are floats."""
    result = loads("a = nan; b = inf")
    assert math.isnan(result["a"])
    assert result["b"] == math.inf


# Booleans and null


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("Yes", True),
        ("on", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("NO", False),
        ("off", False),
        ("null", None),
    ],
)
def test_booleans_and_null(word, expected):
    """Booleans are case-insensitive words; 'null' is None."""
    assert loads(f"a = {word}") == {"a": expected}
    assert loads(f"a = [{word}]") == {"a": [expected]}


# Repeated keys and shorthand


def test_repeated_keys_form_implicit_arrays():
    """A key given more than once collects its values in file order, at the
    position of its first appearance."""
    text = "a = 1; b = x; a = 2; a = [3]; c { a = 1; a = 2 }"
    assert loads(text) == {"a": [1, 2, [3]], "b": "x", "c": {"a": [1, 2]}}


def test_repeated_object_keys_form_implicit_arrays():
    """Repeated object-valued keys also form a list, not a merged object
    (libucl's default duplicate strategy)."""
    text = "board { name = a } board { name = b }"
    assert loads(text) == {"board": [{"name": "a"}, {"name": "b"}]}


def test_nested_key_shorthand():
    """'a b { }' means 'a { b { } }', also with quoted names and arrays."""
    assert loads("a b { c = 1 }") == {"a": {"b": {"c": 1}}}
    assert loads('section "name" { x = 1 }') == {"section": {"name": {"x": 1}}}
    assert loads("a b c { } d = 1") == {"a": {"b": {"c": {}}}, "d": 1}
    assert loads("a b [1, 2]") == {"a": {"b": [1, 2]}}


def test_shorthand_not_triggered_by_brackets_in_strings_or_comments():
    """A '{' inside a quoted value or a comment does not make shorthand."""
    assert loads('a "x{y"\nb c # d {\n') == {"a": "x{y", "b": "c"}


def test_value_with_spaces_is_not_shorthand():
    """Without brackets, 'a b c' is the key 'a' with the value 'b c'."""
    assert loads("a b c\n") == {"a": "b c"}


# Variables


def test_variables_expand_in_strings():
    """$VAR and ${VAR} expand in bare words, double quotes and heredocs."""
    text = 'a = $HOST:${PORT}; b = "${HOST}x"; c = <<E\n$PORT\nE\n'
    variables = {"HOST": "poe", "PORT": "161"}
    assert loads(text, variables=variables) == {"a": "poe:161", "b": "poex", "c": "161"}


def test_variable_expansion_details():
    """Unknown names stay as written, the first known name that fits wins (in
    the order given, as in libucl), '$$' is a '$' when the string also names a
    known variable (else it stays '$$'), and keys are never expanded."""
    variables = {"A": "1", "AB": "2"}
    text = 'a = $ABC; b = ${X}$Y; c = $$ and $A; d = $$A; "$A" = k'
    assert loads(text, variables=variables) == {
        "a": "1BC",
        "b": "${X}$Y",
        "c": "$ and 1",
        "d": "$$A",
        "$A": "k",
    }


def test_builtin_variables(tmp_path):
    """$FILENAME and $CURDIR name the file being read and its directory; for
    a string they are 'undef' and the current directory."""
    path = tmp_path / "conf.ucl"
    path.write_text("f = $FILENAME; d = ${CURDIR}/x")
    real = os.path.realpath(path)
    assert load(path) == {"f": real, "d": os.path.dirname(real) + "/x"}
    assert loads("f = $FILENAME; d = $CURDIR") == {"f": "undef", "d": os.getcwd()}


# Includes


def test_include_relative_to_including_file(tmp_path):
    """.include paths are relative to the including file's directory, and the
    included keys join the object holding the .include."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.ucl").write_text('x = 2; .include "leaf.ucl"')
    (tmp_path / "sub" / "leaf.ucl").write_text("y = 3")
    (tmp_path / "main.ucl").write_text(
        'a = 1\n.include "sub/inner.ucl"\nobj { .include "sub/leaf.ucl"; z = 4 }\n'
    )
    assert load(tmp_path / "main.ucl") == {
        "a": 1,
        "x": 2,
        "y": 3,
        "obj": {"y": 3, "z": 4},
    }


def test_include_repeated_keys_and_curdir(tmp_path):
    """Keys repeated across files form implicit arrays; $CURDIR works in the
    include path; braces round an included file are allowed."""
    (tmp_path / "more.ucl").write_text("{ a = 2 }")
    (tmp_path / "main.ucl").write_text('a = 1; .include "$CURDIR/more.ucl"')
    assert load(tmp_path / "main.ucl") == {"a": [1, 2]}


def test_include_from_string_uses_given_filename(tmp_path):
    """loads() resolves .include against its filename argument's directory."""
    (tmp_path / "part.ucl").write_text("p = 1")
    text = ".include part.ucl\nq = 2"
    assert loads(text, filename=str(tmp_path / "x.ucl")) == {"p": 1, "q": 2}


def test_try_include_skips_missing_file(tmp_path):
    """.try_include of a missing file adds nothing and is not an error."""
    (tmp_path / "main.ucl").write_text('.try_include "absent.ucl"\na = 1')
    assert load(tmp_path / "main.ucl") == {"a": 1}


def test_include_missing_file_is_an_error(tmp_path):
    """.include of a missing file names the including file and line."""
    (tmp_path / "main.ucl").write_text('a = 1\n  .include "absent.ucl"\n')
    with pytest.raises(UCLError) as info:
        load(tmp_path / "main.ucl")
    assert (info.value.line, info.value.column) == (2, 3)
    assert "absent.ucl" in info.value.reason


def test_error_in_included_file_names_that_file(tmp_path):
    """A syntax error in an included file is located in that file."""
    (tmp_path / "bad.ucl").write_text('ok = 1\nbroken = "x\n')
    (tmp_path / "main.ucl").write_text('.include "bad.ucl"')
    with pytest.raises(UCLError) as info:
        load(tmp_path / "main.ucl")
    assert info.value.filename.endswith("bad.ucl")
    assert (info.value.line, info.value.column) == (2, 12)


def test_include_loop_is_an_error(tmp_path):
    """A file including itself (directly or not) raises UCLError."""
    (tmp_path / "a.ucl").write_text('.include "b.ucl"')
    (tmp_path / "b.ucl").write_text('.include "a.ucl"')
    with pytest.raises(UCLError, match="includes itself"):
        load(tmp_path / "a.ucl")


def test_include_depth_limit(tmp_path):
    """As in libucl, 15 nested includes work and a 16th is refused."""
    for i in range(17):
        (tmp_path / f"{i}.ucl").write_text(f'k{i} = {i}\n.include "{i + 1}.ucl"')
    (tmp_path / "16.ucl").write_text("k16 = 16")
    (tmp_path / "15.ucl").write_text("k15 = 15")
    assert len(load(tmp_path / "0.ucl")) == 16
    (tmp_path / "15.ucl").write_text('k15 = 15\n.include "16.ucl"')
    with pytest.raises(UCLError, match="nested more than 15 deep") as info:
        load(tmp_path / "0.ucl")
    assert info.value.filename.endswith("15.ucl")


def test_include_of_directory_is_an_error(tmp_path):
    """Including something that is not a regular file raises UCLError."""
    with pytest.raises(UCLError, match="not a regular file"):
        loads('.include "."', filename=str(tmp_path / "x.ucl"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (".frob x", "unknown macro .frob"),
        (". x", "must start a macro"),
        ('.includes "x"', "cannot verify signatures"),
        ('.include(sign=true) "x"', "cannot verify signatures"),
        ('.include(url=true) "http://h/x"', "including a URL is not supported"),
        ('.include(try=true "x"', "never closed"),
    ],
)
def test_refused_macros(text, fragment):
    """Unknown macros, signature checks and URL includes are refused with
    UCLError saying why."""
    with pytest.raises(UCLError, match=re.escape(fragment)) as info:
        loads(text)
    assert info.value.line == 1


# Errors


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ('a = "abc', 1, 5, "unterminated double-quoted"),
        ('a = 1\nb = "ab\ncd"', 2, 8, "newline inside"),
        ('a = "x\ty"', 1, 7, "control character"),
        ('a = "\\u12"', 1, 10, "invalid \\u escape"),
        ("a = 'abc", 1, 5, "unterminated single-quoted"),
        ("a = 1\n/* open", 2, 1, "unterminated comment"),
        ("a = 1\nb = /* /* */ 2", 2, 5, "unterminated comment"),
        ("h = <<EOD\nabc\n", 1, 5, "heredoc <<EOD is never closed"),
        ("a {\n  b = 1\n", 1, 3, "'{' is never closed"),
        ("a = [1, 2", 1, 5, "'[' is never closed"),
        ("a = 1\n}", 2, 1, "'}' without a matching opening bracket"),
        ("a = [1 }", 1, 8, "inside an array"),
        ("a { b = 1 ]", 1, 11, "inside an object"),
        ("a = ;", 1, 5, "missing value for key 'a'"),
        ("a = }", 1, 5, "missing value for key 'a'"),
        ("a = [,1]", 1, 6, "missing value"),
        ("a =", 1, 4, "missing value for key 'a'"),
        ("a", 1, 2, "missing value for key 'a'"),
        ("a;", 1, 2, "unexpected ';' in key 'a'"),
        ('a = "x" b = 1', 1, 9, "expected ';', ','"),
        ('a = ["x" "y"]', 1, 10, "expected ';', ','"),
        ("= 1", 1, 1, "expected a key"),
        ("{ ; }", 1, 3, "expected a key"),
        ("a == 1", 1, 4, "unexpected '='"),
        ('"" = 1', 1, 1, "empty keys"),
        ("a = 99999999999999999999", 1, 5, "out of range"),
        ("a = 1e999", 1, 5, "out of range"),
        ("x = 1\ny = 2\n  'k' = 3", 3, 3, "expected a key"),
    ],
)
def test_malformed_input(text, line, column, fragment):
    """Each malformed text raises UCLError at the right line and column, with
    a reason saying what is wrong."""
    with pytest.raises(UCLError) as info:
        loads(text, filename="board.ucl")
    error = info.value
    assert (error.filename, error.line, error.column) == ("board.ucl", line, column)
    assert fragment in error.reason
    assert str(error) == f"board.ucl:{line}:{column}: {error.reason}"
    assert "\n" not in str(error)


def test_error_default_filename():
    """Errors from a string name '<string>'."""
    with pytest.raises(UCLError) as info:
        loads("a = [")
    assert str(info.value).startswith("<string>:1:5: ")


@pytest.mark.parametrize(
    "text",
    ["x = " + "[" * 10_000, "x { " + "a { " * 10_000, "x " + "a " * 10_000 + "{"],
)
def test_absurd_nesting_is_refused(text):
    """Nesting far beyond any real file, with brackets or with the 'a b { }'
    shorthand, raises UCLError rather than RecursionError."""
    with pytest.raises(UCLError, match="nesting deeper"):
        loads(text)


def test_nesting_up_to_the_limit_works():
    """Nesting just inside the limit still parses."""
    depth = MAX_DEPTH - 1
    result = loads("x = " + "[" * depth + "]" * depth)
    for _ in range(depth):
        (result,) = result.values() if isinstance(result, dict) else result
    assert result == []


def test_load_unreadable_file(tmp_path):
    """A missing file or one that is not UTF-8 raises UCLError."""
    with pytest.raises(UCLError, match="cannot read"):
        load(tmp_path / "absent.ucl")
    path = tmp_path / "latin1.ucl"
    path.write_bytes("a = 1\nb = caf\xe9\n".encode("latin-1"))
    with pytest.raises(UCLError, match="UTF-8") as info:
        load(path)
    assert (info.value.line, info.value.column) == (2, 8)


# Property tests

UCL_CHARS = list("{}[]()\"'#/*=:;,.$\\<>-+ \t\n\rabcxyzEOD0123456789ekmsbKMB")


@settings(max_examples=400, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(UCL_CHARS) | st.characters(),
        max_size=80,
    )
)
def test_random_text_raises_only_uclerror(tmp_path_factory, text):
    """Whatever the text, the reader returns a dict (a list for a top-level
    array) or raises UCLError."""
    base = tmp_path_factory.getbasetemp() / "fuzz.ucl"
    try:
        result = loads(text, filename=str(base))
    except UCLError as error:
        assert error.line >= 1 and error.column >= 1
        assert "\n" not in str(error)
    else:
        assert isinstance(result, (dict, list))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "a",
                "b = ",
                "{",
                "}",
                "[",
                "]",
                ",",
                ";",
                "\n",
                '"s"',
                "'q'",
                "1",
                "2k",
                "# c\n",
                "/* c */",
                "<<E\nx\nE\n",
                "c d {",
                ".include x",
                "$CURDIR",
                "\\",
                '"',
            ]
        ),
        max_size=30,
    )
)
def test_random_token_soup_raises_only_uclerror(tmp_path_factory, tokens):
    """Sequences of UCL tokens never raise anything but UCLError."""
    base = tmp_path_factory.getbasetemp() / "soup.ucl"
    try:
        assert isinstance(loads("".join(tokens), filename=str(base)), (dict, list))
    except UCLError:
        pass


BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
BARE_WORD = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*\Z")
RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "nan", "inf"}


def safe_text(**kwargs):
    # Built-in variable names inside a string would be expanded.
    return st.text(**kwargs).filter(lambda s: "CURDIR" not in s and "FILENAME" not in s)


keys = st.one_of(st.from_regex(BARE_KEY, fullmatch=True), safe_text(min_size=1))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63 - 1), max_value=2**63 - 1),
    st.from_regex(BARE_WORD, fullmatch=True),
    safe_text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=5)

STYLES = ["json", "equals", "colon", "space"]


def dump_key(key, style):
    if style != "json" and BARE_KEY.match(key):
        return key
    return json.dumps(key, ensure_ascii=style == "json")


def dump_string(s, style):
    if style == "json":
        return json.dumps(s)
    if (
        BARE_WORD.match(s)
        and s.lower() not in RESERVED
        and not s.startswith("//")
        and style != "colon"
    ):
        return s
    if "\\" not in s and "'" not in s and style == "space":
        return "'" + s + "'"
    return json.dumps(s, ensure_ascii=False)


def dump_value(value, style, indent):
    pad = "  " * (indent + 1)
    if isinstance(value, dict):
        return "{\n" + dump_members(value, style, indent + 1) + "  " * indent + "}"
    if isinstance(value, list):
        items = [pad + dump_value(v, style, indent + 1) for v in value]
        if style == "json":
            return "[" + ", ".join(i.strip() for i in items) + "]"
        trailer = ",\n" if style != "space" else "\n"
        return "[\n" + "".join(i + trailer for i in items) + "  " * indent + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return ["false", "off", "no", "true", "on", "yes"][3 * value + indent % 3]
    if isinstance(value, int):
        return str(value)
    return dump_string(value, style)


def dump_members(obj, style, indent):
    pad = "  " * indent
    lines = []
    for key, value in obj.items():
        k = dump_key(key, style)
        v = dump_value(value, style, indent)
        if style == "json":
            lines.append(f"{pad}{k}: {v}")
        elif style == "equals":
            lines.append(f"{pad}# note\n{pad}{k} = {v};\n")
        elif style == "colon":
            lines.append(f"{pad}{k}: {v}, /* note */\n")
        else:
            lines.append(f"{pad}# note\n{pad}{k} {v}\n")
    if style == "json":
        return ",\n".join(lines) + "\n"
    return "".join(lines)


def dump(doc, style):
    body = dump_members(doc, style, 1 if style == "json" else 0)
    return "{\n" + body + "}\n" if style == "json" else body


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(documents, st.sampled_from(STYLES))
def test_round_trip(doc, style):
    """Python values written as UCL in several styles (JSON, '=', ':' or space
    separators, with comments) read back to the same value."""
    text = dump(doc, style)
    assert loads(text) == doc, text


@given(safe_text(max_size=30))
def test_round_trip_json_strings(s):
    """Any string written as a JSON string, ASCII-escaped or not, reads back."""
    assert loads("a = " + json.dumps(s)) == {"a": s}
    assert loads("a = " + json.dumps(s, ensure_ascii=False)) == {"a": s}
