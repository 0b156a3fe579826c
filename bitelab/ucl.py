"""A reader for UCL, the configuration language of libucl.

``loads`` and ``load`` turn UCL text into plain Python values (``dict``,
``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``): the values
that libucl's parser (``src/ucl_parser.c``) gives for the same text, as its
JSON output would show them.  The reader follows libucl step by step: the
same character classes, the same rules for where a key, a value or a comment
ends, the same number suffixes, variables and macros (``.include`` with all
its arguments, ``.try_include``, ``.priority``, ``.load`` and ``.inherit``),
the same priorities and duplicate-key strategies.  Where libucl refuses a
text, the reader refuses it too, with ``UCLError`` naming the file, line and
column.

It knowingly differs from libucl only where libucl's behaviour is a plain
bug or needs something bitelab does not offer (signature checks, fetching
URLs, bytes that are not UTF-8); README.rst ("Boards: UCL") lists each case,
and ``tests/test_ucl_conformance.py`` pins each one down.
"""

import glob
import math
import os
import re
import string

__all__ = ["MAX_DEPTH", "UCLError", "load", "loads"]

# Deep enough for any real configuration, shallow enough that turning the
# result into Python values stays far from Python's recursion limit.
MAX_DEPTH = 100
# libucl's limit on nested chunks: the main file and 15 nested includes.
MAX_INCLUDE_DEPTH = 16

# libucl's character classes (src/ucl_chartable.h).  libucl reads bytes and
# counts every byte from 0x80 up as a key or string character; here every
# non-ASCII character does.
_WS = " \t"
_WS_ALL = " \t\n\v\f\r"
_VALUE_END = "\0\n\r#,;]}"
_KEY_SEP = " \t:="
_ESCAPES = frozenset('"/\\bfnrtu')
_KEY_START = frozenset(string.ascii_letters + string.digits + "_/")
_KEY_CHARS = _KEY_START | {"-", "."}
_DIGITS = frozenset(string.digits)
_HEX = frozenset(string.hexdigits)
_JSON_ESCAPES = {"n": "\n", "r": "\r", "b": "\b", "t": "\t", "f": "\f"}
_BOOLEANS = {
    "true": True,
    "yes": True,
    "on": True,
    "false": False,
    "no": False,
    "off": False,
}
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# The smallest normal double: strtod reports ERANGE for anything smaller.
_DBL_MIN = 2.2250738585072014e-308
# What strtod reads of the digits, dot and exponent libucl collected.
_STRTOD = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# What strtol/strtoll read: leading C white space, a sign, digits.
_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
# A libucl number buffer holds at most 127 characters; a longer number is a
# string.
_NUMBUF = 128
_SIZE = {"k": 1000, "m": 1000**2, "g": 1000**3}
_BYTES = {"k": 1024, "m": 1024**2, "g": 1024**3}
_TIME = {"h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}

# Node kinds.
_NULL = "null"
_SCALAR = "scalar"
_OBJECT = "object"
_ARRAY = "array"

# Duplicate-key strategies (.include's duplicate argument).
_APPEND = "append"
_MERGE = "merge"
_REWRITE = "rewrite"
_ERROR = "error"

# Parser states.
_KEY = "key"
_VALUE = "value"
_AFTER_VALUE = "after value"

_MACROS = ("include", "try_include", "includes", "priority", "load", "inherit")


class UCLError(Exception):
    """UCL text that cannot be read.

    ``filename``, ``line`` and ``column`` (both 1-based) locate the problem and
    ``reason`` says what is wrong; ``str()`` gives ``FILE:LINE:COLUMN: reason``.
    """

    def __init__(self, filename, line, column, reason):
        super().__init__(filename, line, column, reason)
        self.filename = filename
        self.line = line
        self.column = column
        self.reason = reason

    def __str__(self):
        return f"{self.filename}:{self.line}:{self.column}: {self.reason}"


def loads(text, filename="<string>", variables=None):
    """Parse UCL ``text``; the result is a ``dict`` (a ``list`` if the text
    is an array, as libucl allows).

    ``filename`` is used in error messages, for ``$FILENAME``/``$CURDIR`` and
    to resolve relative paths of macros (the current directory when it is
    ``"<string>"``).  ``variables`` maps names to the strings that ``$NAME``
    and ``${NAME}`` expand to.
    """
    if filename == "<string>":
        real = None
        file_vars = {"FILENAME": "undef", "CURDIR": _getcwd()}
    else:
        real = os.path.realpath(filename)
        file_vars = {"FILENAME": real, "CURDIR": os.path.dirname(real)}
    _check_bom(text, filename)
    user_vars = [(str(k), str(v)) for k, v in (variables or {}).items() if str(k)]
    parser = _Parser(user_vars)
    chunk = parser.chunk_for(text, filename, real, file_vars)
    parser.read(chunk)
    return _python(parser.top)


def load(path, variables=None):
    """Read and parse the UCL file at ``path`` (see ``loads``).

    Relative paths in its macros are taken from the file's directory.  A file
    that cannot be read or is not UTF-8 also raises ``UCLError``.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UCLError(filename, 1, 1, f"cannot read the file: {reason}") from None
    return loads(_decode(data, filename), filename, variables)


def _getcwd():
    try:
        return os.getcwd()
    except OSError:
        return "."


def _decode(data, filename):
    """UTF-8 ``data`` as text, or a ``UCLError`` pointing at the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        raise UCLError(
            filename, line, column, "the file is not valid UTF-8; re-save it as UTF-8"
        ) from None


def _check_bom(text, filename):
    # libucl would read a byte-order mark as the start of the first key.
    if text.startswith("\ufeff"):
        raise UCLError(
            filename,
            1,
            1,
            "the file starts with a byte-order mark; save it as UTF-8 without one",
        )


def _describe(c):
    if c == "\n":
        return "a newline"
    if c.isprintable() and not c.isspace():
        return repr(c)
    return f"U+{ord(c):04X}"


def _is_key_start(c):
    return c in _KEY_START or ord(c) >= 0x80


def _is_key_char(c):
    return c in _KEY_CHARS or ord(c) >= 0x80


def _unescape_json(s):
    """libucl's unescaping of a double-quoted string or a bare word.

    Known escapes give their character, any other escaped character stands
    for itself, a final lone backslash stays.  ``\\u`` takes the next four
    characters as hex digits up to the first that is not one, as libucl
    does; a surrogate pair is joined into one character and a lone surrogate
    becomes U+FFFD (libucl writes each half as three bytes, which is not
    UTF-8).
    """
    if len(s) <= 1:
        return s
    out = []
    units = []  # consecutive \u code units, to join surrogate pairs
    h = 0
    left = len(s)
    while left:
        if s[h] == "\\":
            h += 1
            if left == 1:
                left -= 1
                out.append("\\")
                continue
            e = s[h]
            if e == "u":
                h += 1
                left -= 1
                if left > 3:
                    value = 0
                    for i in range(4):
                        value <<= 4
                        # Past the end libucl reads the string's final NUL.
                        digit = s[h + i] if h + i < len(s) else "\0"
                        if digit not in _HEX:
                            break
                        value += int(digit, 16)
                    units.append((len(out), value))
                    out.append(None)
                    h += 4
                    left -= 4
                    if left > 0:
                        left -= 1
                    continue
                out.append("u")
            else:
                out.append(_JSON_ESCAPES.get(e, e))
            h += 1
            left -= 1
        else:
            out.append(s[h])
            h += 1
        if left > 0:
            left -= 1
    _place_code_units(out, units)
    return "".join(out)


def _place_code_units(out, units):
    """Fill the ``\\u`` slots of ``out``, joining adjacent surrogate pairs."""
    i = 0
    while i < len(units):
        index, value = units[i]
        if 0xD800 <= value < 0xDC00 and i + 1 < len(units):
            next_index, low = units[i + 1]
            if next_index == index + 1 and 0xDC00 <= low < 0xE000:
                out[index] = chr(0x10000 + ((value - 0xD800) << 10) + (low - 0xDC00))
                out[next_index] = ""
                i += 2
                continue
        out[index] = "\ufffd" if 0xD800 <= value < 0xE000 else chr(value)
        i += 1


def _unescape_squoted(s):
    """libucl's unescaping of a single-quoted string: ``\\'`` is a quote,
    backslash-newline vanishes, any other backslash stays."""
    out = []
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        # The lexer leaves no backslash last.
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = s[i + 1]
        i += 2
        if e == "'":
            out.append("'")
        elif e == "\r":
            if s.startswith("\n", i):
                i += 1
        elif e != "\n":
            out.append("\\" + e)
    return "".join(out)


def _strtol(text):
    """C's strtol/strtoll: the number at the start of ``text`` (after C
    white space), clamped to 64 bits, and what follows it; (None, text) if
    there is none."""
    m = _STRTOL.match(text)
    if m is None:
        return None, text
    value = max(_INT64_MIN, min(_INT64_MAX, int(m[1])))
    return value, text[m.end() :]


class _Node:
    """A libucl object: its kind, value and priority.

    An object's value maps each key to the list of nodes given for it (more
    than one is libucl's implicit array); an array's value is a list of nodes.
    """

    __slots__ = ("inherited", "kind", "priority", "value")

    def __init__(self, priority, kind=_NULL, value=None):
        self.kind = kind
        self.value = value
        # libucl keeps four bits of priority in each object.
        self.priority = priority & 15
        # Copied in by .inherit: the next value given for the key replaces it.
        self.inherited = False


def _python(node):
    if node.kind == _OBJECT:
        return {
            key: _python(chain[0]) if len(chain) == 1 else [_python(n) for n in chain]
            for key, chain in node.value.items()
        }
    if node.kind == _ARRAY:
        return [_python(n) for n in node.value]
    return node.value


def _copy(node):
    new = _Node(node.priority, node.kind)
    new.inherited = node.inherited
    if node.kind == _OBJECT:
        new.value = {key: _copy_chain(chain) for key, chain in node.value.items()}
    elif node.kind == _ARRAY:
        new.value = [_copy(n) for n in node.value]
    else:
        new.value = node.value
    return new


def _copy_chain(chain):
    # As ucl_object_copy: a scalar keeps its implicit array, a container
    # only its first value.
    if chain[0].kind in (_OBJECT, _ARRAY):
        return [_copy(chain[0])]
    return [_copy(n) for n in chain]


class _Frame:
    """An open object or array on the parser's stack."""

    __slots__ = ("level", "node", "obrace", "pos")

    def __init__(self, node, level, obrace, pos):
        self.node = node
        # Containers made by the 'a b { }' shorthand sit one level deeper than
        # their parent, so that the closing brace also closes them.
        self.level = level
        self.obrace = obrace
        self.pos = pos


class _Chunk:
    """One text being read: the main text, an included file or the
    arguments of a macro.  It spans ``text[pos:end]``."""

    __slots__ = (
        "base_depth",
        "base_dir",
        "braced",
        "end",
        "filename",
        "includes",
        "next_key",
        "pos",
        "priority",
        "strategy",
        "text",
        "variables",
    )

    def __init__(self, text, filename, variables, includes):
        self.text = text
        self.end = len(text)
        self.pos = 0
        self.filename = filename
        self.base_dir = dict(variables)["CURDIR"]
        # libucl's variable list: FILENAME, CURDIR, then the user's, in order.
        self.variables = variables
        self.priority = 0
        self.strategy = _APPEND
        # How many frames the text found open; it may not close them.
        self.base_depth = 0
        # Position of the '{' round a whole included file, until its '}'.
        self.braced = None
        # libucl keeps this flag from the last key read without '=' or ':'.
        self.next_key = False
        self.includes = includes


class _IncludeParams:
    """The arguments of one .include/.try_include."""

    __slots__ = (
        "glob",
        "key",
        "must_exist",
        "priority",
        "soft",
        "strategy",
        "target",
        "url",
        "use_prefix",
    )

    def __init__(self, soft):
        self.soft = soft
        self.must_exist = not soft
        self.glob = False
        self.url = False
        self.use_prefix = False
        self.key = None
        self.target = "object"
        self.priority = 0
        self.strategy = _APPEND


def _option(key, options):
    """The option of ``options`` that ``key`` names: libucl compares only the
    key's length, so any prefix of an option's name selects it."""
    for option in options:
        if option.startswith(key):
            return option
    return None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class _Parser:
    """libucl's parser: a state machine over chunks sharing one stack."""

    def __init__(self, user_vars):
        self.user_vars = user_vars
        self.stack = []
        self.top = None
        self.cur = None
        self.state = _KEY
        self.key_name = None
        self.stale_nested = None
        self.include_paths = None
        self.chunk = None

    def chunk_for(self, text, filename, real, file_vars, includes=None):
        variables = [("FILENAME", file_vars["FILENAME"])]
        variables.append(("CURDIR", file_vars["CURDIR"]))
        variables += [(k, v) for k, v in self.user_vars if k not in file_vars]
        if includes is None:
            includes = (real,) if real else ()
        return _Chunk(text, filename, variables, includes)

    def error(self, reason, pos=None):
        """A ``UCLError`` at ``pos`` (default: the current position)."""
        chunk = self.chunk
        if pos is None:
            pos = chunk.pos
        pos = min(pos, len(chunk.text))
        text = chunk.text
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return UCLError(chunk.filename, line, column, reason)

    # Reading a chunk

    def read(self, chunk):
        """Read ``chunk`` into the object at the top of the stack (or into a
        new top object)."""
        outer = self.chunk
        self.chunk = chunk
        try:
            if chunk.pos == chunk.end and self.top is None:
                self.top = _Node(chunk.priority, _OBJECT, {})
                return
            self.start(chunk)
            while chunk.pos < chunk.end:
                if self.state == _KEY:
                    self.key(chunk)
                elif self.state == _VALUE:
                    self.value(chunk)
                elif not self.after_value(chunk):
                    # The top-level braces closed: libucl ignores the rest.
                    return
            self.finish(chunk)
        finally:
            self.chunk = outer

    def start(self, chunk):
        self.skip_blanks(chunk)
        text, pos = chunk.text, chunk.pos
        c = text[pos] if pos < chunk.end else ""
        if self.top is None:
            kind = _ARRAY if c == "[" else _OBJECT
            self.top = _Node(chunk.priority, kind, [] if kind == _ARRAY else {})
            braced = c in ("[", "{")
            self.push(self.top, 0, braced, pos)
            if braced:
                chunk.pos += 1
            self.cur = self.top
            self.state = _VALUE if kind == _ARRAY else _KEY
            return
        if c == "[":
            raise self.error(
                "an included file must hold keys, not an array; put the array "
                "under a key"
            )
        if c == "{":
            # Braces round a whole included file just wrap its keys.
            chunk.braced = pos
            chunk.pos += 1
        self.state = _KEY

    def finish(self, chunk):
        if chunk.braced is not None:
            raise self.error("'{' is never closed; add a matching '}'", chunk.braced)
        for frame in self.stack[chunk.base_depth :]:
            if frame.obrace:
                pair = "{}" if frame.node.kind == _OBJECT else "[]"
                raise self.error(
                    f"{pair[0]!r} is never closed; add a matching {pair[1]!r}",
                    frame.pos,
                )

    def push(self, node, level, obrace, pos):
        if len(self.stack) >= MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH} levels; flatten it", pos)
        self.stack.append(_Frame(node, level, obrace, pos))
        self.cur = node

    # Blanks and comments

    def comment_at(self, chunk, p):
        """Whether a comment starts at ``p`` (libucl wants two characters
        left: a '#' that ends the text is not one)."""
        text = chunk.text
        return chunk.end - p >= 2 and (
            text[p] == "#" or (text[p] == "/" and text[p + 1] == "*")
        )

    def skip_comments(self, chunk):
        """Skip the comments that start at the current position."""
        text, end = chunk.text, chunk.end
        p = chunk.pos
        while p < end:
            if text[p] == "#":
                nl = text.find("\n", p, end)
                p = end if nl < 0 else nl + 1
            elif text.startswith("/*", p, end):
                p = self.block_comment_end(chunk, p)
            else:
                break
        chunk.pos = p

    def block_comment_end(self, chunk, start):
        end = _block_comment_end(chunk.text, start, chunk.end)
        if end is None:
            raise self.error("unterminated comment; close it with '*/'", start)
        return end

    def skip_blanks(self, chunk):
        """Skip white space and comments, in any order.

        libucl skips blanks only before a comment in some places (after '[',
        before a value on a new line, in macros), so that the blanks after
        the comment start the next value; here they never do."""
        text, end = chunk.text, chunk.end
        while chunk.pos < end:
            c = text[chunk.pos]
            if c in _WS_ALL:
                chunk.pos += 1
            elif c == "#" or text.startswith("/*", chunk.pos, end):
                self.skip_comments(chunk)
            else:
                return

    # Keys

    def key(self, chunk):
        """libucl's key state: a key, a macro, or the end of an object."""
        text, end = chunk.text, chunk.end
        p = chunk.pos
        while p < end and text[p] in _WS_ALL:
            p += 1
        chunk.pos = p
        if p == end or text[p] == "}":
            self.state = _AFTER_VALUE
            return
        while True:
            if p >= end:
                chunk.pos = end
                return
            c = text[p]
            if self.comment_at(chunk, p):
                chunk.pos = p
                self.skip_comments(chunk)
                p = chunk.pos
            elif c in _WS_ALL:
                p += 1
            elif c == "}":
                chunk.pos = p
                self.state = _AFTER_VALUE
                return
            elif c == ".":
                chunk.pos = p
                self.macro(chunk)
                return
            elif c == "#":
                # A '#' ending the text: libucl refuses it, it is a comment.
                p = end
            elif c == '"' or _is_key_start(c):
                break
            else:
                raise self.error(self.bad_key_start(c), p)
        key_pos = p
        if c == '"':
            p, need_unescape, _ = self.lex_dquoted(chunk, p)
            raw = text[key_pos + 1 : p - 1]
            key = _unescape_json(raw) if need_unescape else raw
            if p >= end:
                raise self.error(f"missing value for key {key!r}", p)
        else:
            p += 1
            while p < end and _is_key_char(text[p]):
                p += 1
            key = text[key_pos:p]
            if p >= end:
                raise self.error(f"missing value for key {key!r}", p)
            if text[p] not in _KEY_SEP:
                raise self.error(self.bad_key_char(key, text[p]), p)
        got_sep = None
        while p < end:
            c = text[p]
            if c in _WS:
                p += 1
            elif c in "=:":
                if got_sep is not None:
                    raise self.error(
                        f"unexpected {c!r} after key {key!r}; use one '=' or ':'", p
                    )
                got_sep = p
                p += 1
            elif self.comment_at(chunk, p):
                chunk.pos = p
                self.skip_comments(chunk)
                p = chunk.pos
            else:
                break
        if p >= end:
            raise self.error(f"missing value for key {key!r}", p)
        if not key:
            raise self.error("empty keys are not allowed", key_pos)
        self.key_name = key
        if got_sep is None:
            chunk.next_key = self.nested_key_follows(chunk, p)
        chunk.pos = p
        self.add_key(key, _Node(chunk.priority), key_pos)
        if chunk.next_key:
            # 'a b { }' is 'a { b { } }'.  libucl keeps the flag for the next
            # key even when that key has '=' or ':'.
            self.stale_nested = got_sep
            frame = self.stack[-1]
            self.add_container(self.cur, _OBJECT, frame.level + 1, False, key_pos)
        else:
            self.stale_nested = None
            self.state = _VALUE

    def bad_key_start(self, c):
        reason = (
            f"expected a key, found {_describe(c)}; "
            "keys start with a letter, a digit, '_', '/' or '\"'"
        )
        if c in "{[" and self.stale_nested is not None:
            sep = self.chunk.text[self.stale_nested]
            reason = (
                f"expected a key, found {c!r}: a nested key name ('a b') takes "
                f"no {sep!r}; write 'a b {c}' or 'a {{ b {sep} {c}'"
            )
        return reason

    def bad_key_char(self, key, c):
        if c in "\n\r":
            return (
                f"the value of key {key!r} must start on the key's line; "
                "put it after the key, or after '=' on the key's line"
            )
        if c in "{[":
            return (
                f"a space is needed between key {key!r} and {c!r}; "
                f"write '{key} {c}'"
            )
        return (
            f"unexpected {_describe(c)} in key {key!r}; quote the key or put "
            "'=', ':' or a space after it"
        )

    def nested_key_follows(self, chunk, p):
        """Whether the 'a b { }' shorthand follows a key: a '{' or '[' later
        on the line, not at the start of the value.

        libucl also counts brackets inside quoted strings and comments; here
        they do not count."""
        text, end = chunk.text, chunk.end
        while p < end and text[p] in _WS:
            p += 1
        if p < end and text[p] in "{[":
            return False
        word_start = True
        while p < end:
            c = text[p]
            if c in ",;\n\r#":
                return False
            if c in "{[":
                return True
            if c == "\\":
                # An escaped quote starts no string.
                p += 1
                word_start = False
                continue
            if c in "\"'" and word_start:
                q = p + 1
                while q < end and text[q] != c:
                    q += 2 if text[q] == "\\" else 1
                # An unclosed quote is just a character of a bare word.
                if q < end:
                    p = q
            elif text.startswith("/*", p, end):
                p = _block_comment_end(text, p, end)
                if p is None:
                    return False
                word_start = True
                continue
            word_start = c in _WS
            p += 1
        return False

    def add_key(self, key, node, pos):
        """libucl's handling of a key in the current object, duplicates
        resolved by priority and by the chunk's duplicate strategy."""
        obj = self.stack[-1].node
        chain = obj.value.get(key)
        if chain is None:
            obj.value[key] = [node]
            self.cur = node
            return
        old = chain[0]
        strategy = self.chunk.strategy
        if strategy == _ERROR:
            raise self.error(
                f"duplicate key {key!r}; this file was included with "
                'duplicate="error"',
                pos,
            )
        if strategy == _REWRITE:
            obj.value[key] = [node]
        elif strategy == _MERGE and old.kind in (_OBJECT, _ARRAY):
            # The new value is read into the old container.
            node = old
        else:
            new_priority = node.priority
            if strategy == _APPEND and old.inherited:
                new_priority = old.priority + 1
            if new_priority == old.priority:
                chain.append(node)
            elif new_priority > old.priority:
                obj.value[key] = [node]
            # A lower priority is read, then dropped.
        self.cur = node

    # Values

    def container(self):
        """The node the next value goes into: a new array element, or the
        node of the last key."""
        top = self.stack[-1].node
        if top.kind == _ARRAY:
            node = _Node(self.chunk.priority)
            top.value.append(node)
            self.cur = node
            return node
        return self.cur

    def add_container(self, node, kind, level, obrace, pos):
        if node.kind in (_OBJECT, _ARRAY) and node.kind != kind:
            raise self.error(
                f"cannot merge {'an array' if kind == _ARRAY else 'an object'} "
                f"into the existing {node.kind} of the same key",
                pos,
            )
        if node.kind != kind:
            node.kind = kind
            node.value = [] if kind == _ARRAY else {}
        self.push(node, level, obrace, pos)
        self.state = _VALUE if kind == _ARRAY else _KEY

    def set_value(self, node, value):
        node.kind = _NULL if value is None else _SCALAR
        node.value = value
        self.state = _AFTER_VALUE

    def value(self, chunk):
        """libucl's value state: one value, or the end of an array."""
        text, end = chunk.text, chunk.end
        p = chunk.pos
        # A '#' ending the text is a comment only after blanks, as in libucl.
        if p < end and (text[p] in _WS_ALL or self.comment_at(chunk, p)):
            self.skip_blanks(chunk)
            p = chunk.pos
        if p >= end:
            return
        c = text[p]
        if c == '"':
            q, need_unescape, var_expand = self.lex_dquoted(chunk, p)
            s = text[p + 1 : q - 1]
            if need_unescape:
                s = _unescape_json(s)
            if var_expand:
                s = self.expand(s)
            self.set_value(self.container(), s)
            chunk.pos = q
        elif c == "'":
            q, need_unescape = self.lex_squoted(chunk, p)
            s = text[p + 1 : q - 1]
            self.set_value(
                self.container(), _unescape_squoted(s) if need_unescape else s
            )
            chunk.pos = q
        elif c in "{[":
            node = self.container()
            kind = _ARRAY if c == "[" else _OBJECT
            self.add_container(node, kind, self.stack[-1].level, True, p)
            chunk.pos = p + 1
        elif c == "]" and self.stack[-1].node.kind == _ARRAY:
            self.state = _AFTER_VALUE
        else:
            node = self.container()
            if c == "<" and self.heredoc(chunk, p, node):
                return
            self.atom(chunk, p, node)

    def atom(self, chunk, p, node):
        """A bare word: a number, null, nan, inf, a boolean or a string."""
        text, end = chunk.text, chunk.end
        if text[p] == "-" or text[p] in _DIGITS:
            number = self.number(chunk, p)
            if number is not None:
                value, chunk.pos = number
                self.set_value(node, value)
                return
        q, var_expand, need_unescape = _scan_word(text, p, end)
        stop = q
        while stop > p and text[stop - 1] in _WS:
            stop -= 1
        raw = text[p:stop]
        if not raw:
            raise self.error(self.missing_value(text[p]), p)
        chunk.pos = q
        if raw == "null":
            value = None
        elif raw in ("nan", "inf"):
            value = float(raw)
        elif raw.isascii() and raw.lower() in _BOOLEANS:
            value = _BOOLEANS[raw.lower()]
        else:
            value = _unescape_json(raw) if need_unescape else raw
            if var_expand:
                value = self.expand(value)
        self.set_value(node, value)

    def missing_value(self, c):
        if self.stack[-1].node.kind == _ARRAY:
            where = "in the array"
        else:
            where = f"for key {self.key_name!r}"
        return f"missing value {where}, found {_describe(c)}"

    def number(self, chunk, start):
        """libucl's number: (value, end) or None when the word is not one.

        Raises ``UCLError`` when strtod/strtoimax would report ERANGE."""
        text, end = chunk.text, chunk.end
        p = start
        negative = text[p] == "-"
        if negative:
            p += 1
        digits = p
        valid = got_dot = got_exp = need_double = is_hex = False
        x_pos = None
        while p < end:
            c = text[p]
            if is_hex and c in _HEX:
                p += 1
            elif c in _DIGITS:
                valid = True
                p += 1
            elif not is_hex and c in "xX":
                is_hex = True
                x_pos = p
                digits = p + 1
                p += 1
            elif not is_hex:
                if p == digits:
                    return None
                if c == ".":
                    if got_dot:
                        return None
                    got_dot = need_double = True
                    p += 1
                elif c in "eE":
                    if got_exp:
                        return None
                    got_exp = need_double = True
                    p += 1
                    if p >= end or not (text[p] in _DIGITS or text[p] in "+-"):
                        return None
                    p += 1
                else:
                    break
            elif c == ".":
                return None
            else:
                break
        if not valid or p == digits or p - digits + 1 >= _NUMBUF:
            return None
        # libucl takes an 'x' after any digits for a hex prefix ('1x5' is 5);
        # only '0x' is one here.
        if is_hex and text[start + negative : x_pos] != "0":
            return None
        sign = "-" if negative else ""
        if need_double:
            m = _STRTOD.match(sign + text[digits:p])
            dv = float(m[0])
            mantissa = re.split("[eE]", m[0])[0]
            if (
                math.isinf(dv)
                or (dv != 0 and abs(dv) < _DBL_MIN)
                or (dv == 0 and mantissa.strip("-0."))
            ):
                raise self.out_of_range(start, p)
            q = digits + len(m[0]) - len(sign)
            lv = None
        else:
            lv = int(sign + text[digits:p], 16 if is_hex else 10)
            if not _INT64_MIN <= lv <= _INT64_MAX:
                raise self.out_of_range(start, p)
            q = p
            dv = None
        result = self.number_suffix(text, q, end, lv, dv, is_hex)
        if result is None:
            return None
        value, q = result
        if _is_int(value) and not _INT64_MIN <= value <= _INT64_MAX:
            # libucl lets the multiplication wrap round.
            raise self.out_of_range(start, q)
        return value, q

    def out_of_range(self, start, p):
        return self.error(f"number {self.chunk.text[start:p]!r} is out of range", start)

    def number_suffix(self, text, q, end, lv, dv, is_hex):
        """Apply what follows libucl's number at ``q``: a size, bytes or time
        suffix, or blanks before the end of the value.  Returns (value, end)
        or None when the word is a string after all."""
        if q >= end or text[q] in _VALUE_END:
            return (dv if lv is None else lv), q
        c = text[q].lower() if text[q].isascii() else text[q]
        after = text[q + 1] if q + 1 < end else None
        if c in "mgk":
            if after is None:
                return _scaled(lv, dv, _SIZE[c]), q + 1
            if after in "sS":
                seconds = float(lv if dv is None else dv)
                seconds = seconds / 1000 if c == "m" else seconds * _SIZE[c]
                return _time(lv, seconds, is_hex, text, q + 2, end)
            if after in "bB":
                whole = lv if dv is None else int(dv)
                return _suffix_end(whole * _BYTES[c], text, q + 2, end)
            if after in _VALUE_END:
                return _scaled(lv, dv, _SIZE[c]), q + 1
            if text[q : min(q + 3, end)].lower() == "min":
                seconds = float(lv if dv is None else dv) * 60
                return _time(lv, seconds, is_hex, text, q + 3, end)
            return None
        if c in "shdwy" and (after is None or after in _VALUE_END):
            seconds = float(lv if dv is None else dv) * _TIME.get(c, 1.0)
            return _time(lv, seconds, is_hex, text, q + 1, end)
        if c in _WS:
            while q < end and text[q] in _WS:
                q += 1
            if q == end or text[q] in _VALUE_END:
                return (dv if lv is None else lv), q
        return None

    def heredoc(self, chunk, p, node):
        """A ``<<TERM`` heredoc at ``p``; False when there is none (the text
        is then read as a bare word)."""
        text, end = chunk.text, chunk.end
        if end - p <= 3 or not text.startswith("<<", p, end):
            return False
        q = p + 2
        while q < end and "A" <= text[q] <= "Z":
            q += 1
        term = text[p + 2 : q]
        if q == end:
            raise self.error(f"heredoc <<{term} is never closed", p)
        if text[q] == "\r" and term:
            raise self.error(
                f"heredoc <<{term} must end its line with LF, not CRLF; "
                "save the file with Unix line ends",
                q,
            )
        if text[q] != "\n":
            return False
        start = r = q + 1
        newline = False
        while r < end:
            if newline:
                if end - r < len(term):
                    break
                if text.startswith(term, r, end):
                    tend = r + len(term)
                    if tend < end and text[tend] not in "\n;,":
                        # Not the terminator: libucl moves on by one
                        # character, still looking for it.
                        r += 1
                        continue
                    value = text[start : r - 1]
                    self.set_value(node, self.expand(value) if "$" in value else value)
                    chunk.pos = tend
                    return True
            newline = text[r] == "\n"
            r += 1
        hint = " (with LF line ends, not CRLF)" if "\r" in text[start:end] else ""
        raise self.error(
            f"heredoc <<{term} is never closed; end it with a line holding "
            f"only {term}{hint}",
            p,
        )

    def lex_dquoted(self, chunk, start):
        """The double-quoted string whose quote is at ``start``: returns the
        position after its closing quote, whether it has escapes and whether
        it names variables."""
        text, end = chunk.text, chunk.end
        p = start + 1
        need_unescape = var_expand = False
        while p < end:
            c = text[p]
            if ord(c) < 0x1F:
                if c == "\n":
                    raise self.error(
                        "newline inside a double-quoted string; close the string "
                        "on this line or write \\n",
                        p,
                    )
                raise self.error(
                    f"control character {_describe(c)} inside a double-quoted "
                    f"string; write it as \\u{ord(c):04x}",
                    p,
                )
            if c == "\\":
                p += 1
                if p >= end:
                    break
                if text[p] in _ESCAPES:
                    if text[p] == "u":
                        p += 1
                        for _ in range(4):
                            if p >= end:
                                break
                            if text[p] not in _HEX:
                                raise self.error(
                                    "invalid \\u escape; write four hex digits, "
                                    "as in \\u00e9",
                                    p,
                                )
                            p += 1
                        if p >= end:
                            break
                    else:
                        p += 1
                need_unescape = True
                continue
            if c == '"':
                return p + 1, need_unescape, var_expand
            if c == "$":
                var_expand = True
            p += 1
        raise self.error(
            "unterminated double-quoted string; add the closing '\"'", start
        )

    def lex_squoted(self, chunk, start):
        text, end = chunk.text, chunk.end
        p = start + 1
        need_unescape = False
        while p < end:
            c = text[p]
            if c == "\\":
                if p + 1 >= end:
                    break
                p += 2
                need_unescape = True
                continue
            if c == "'":
                return p + 1, need_unescape
            p += 1
        raise self.error(
            'unterminated single-quoted string; add the closing "\'"', start
        )

    # Between values

    def after_value(self, chunk):
        """libucl's after-value state: separators and closing brackets.
        Returns False once the top-level brackets are closed."""
        text, end = chunk.text, chunk.end
        got_sep = False
        while chunk.pos < end:
            p = chunk.pos
            c = text[p]
            if c in _WS:
                chunk.pos += 1
            elif self.comment_at(chunk, p):
                self.skip_comments(chunk)
                got_sep = True
            elif c in "}]":
                if not self.close(chunk, c, p):
                    return False
                got_sep = True
            elif c in _VALUE_END:
                chunk.pos += 1
                got_sep = True
            elif got_sep:
                break
            else:
                raise self.error(
                    f"expected ';', ',' or a newline after the value, found "
                    f"{_describe(c)}"
                )
        if self.stack:
            self.state = _KEY if self.stack[-1].node.kind == _OBJECT else _VALUE
        return True

    def close(self, chunk, c, p):
        """Close the innermost object or array with ``c``; False when that
        closed the top level."""
        frame = self.stack[-1]
        if len(self.stack) == chunk.base_depth:
            if c == "}" and chunk.braced is not None:
                chunk.braced = None
                chunk.pos = p + 1
                return True
            raise self.error(f"{c!r} closes nothing opened in this file; remove it", p)
        want = "}" if frame.node.kind == _OBJECT else "]"
        if c != want:
            what = "an object" if want == "}" else "an array"
            raise self.error(
                f"unexpected {c!r} inside {what}; close it with {want!r}", p
            )
        if not frame.obrace:
            raise self.error(f"{c!r} without a matching opening bracket; remove it", p)
        self.stack.pop()
        # Containers of the 'a b { }' shorthand end with their braces.
        while len(self.stack) > max(chunk.base_depth, 1):
            inner = self.stack[-1]
            if self.stack[-2].level == inner.level:
                break
            self.stack.pop()
            self.cur = inner.node
        if not self.stack:
            return False
        chunk.pos = p + 1
        return True

    # Variables

    def expand(self, s):
        """libucl's variable expansion: ``$NAME``, ``${NAME}`` and ``$$``,
        only when ``s`` names at least one known variable (the first
        variable whose name fits wins)."""
        variables = self.chunk.variables
        if not _names_variable(s, variables):
            return s
        out = []
        i = 0
        n = len(s)
        while i < n:
            c = s[i]
            if c != "$" or i + 1 == n:
                out.append(c)
                i += 1
                continue
            if s[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if s[i + 1] == "{":
                for name, value in variables:
                    if s.startswith(name + "}", i + 2):
                        out.append(value)
                        i += 3 + len(name)
                        break
                else:
                    out.append("${")
                    i += 2
                continue
            for name, value in variables:
                if s.startswith(name, i + 1):
                    out.append(value)
                    i += 1 + len(name)
                    break
            else:
                out.append("$")
                i += 1
        return "".join(out)

    # Macros

    def macro(self, chunk):
        """A macro at the current '.': its name, arguments and value."""
        text, end = chunk.text, chunk.end
        start = chunk.pos
        p = start + 1
        while p < end and text[p] not in _WS_ALL and text[p] != "(":
            p += 1
        name = text[start + 1 : p]
        if not name:
            raise self.error("'.' must start a macro such as .include \"file\"", start)
        if name not in _MACROS:
            raise self.error(
                f"unknown macro .{name}; the macros are "
                + ", ".join("." + m for m in _MACROS),
                start,
            )
        chunk.pos = p
        self.skip_blanks(chunk)
        args = None
        if chunk.pos < end and text[chunk.pos] == "(":
            args = self.macro_args(chunk, name)
            self.skip_blanks(chunk)
        if chunk.pos >= end:
            # libucl silently ignores a macro that the text ends in.
            raise self.error(f"missing argument after .{name}", start)
        value = self.expand(self.macro_value(chunk, name))
        self.state = _KEY
        if name in ("include", "try_include", "includes"):
            self.include(name, value, args, start)
        elif name == "priority":
            self.priority(value, args, start)
        elif name == "load":
            self.load_macro(value, args, start)
        else:
            self.inherit(value, args, start)

    def macro_args(self, chunk, name):
        """The ``(...)`` arguments of a macro, read as UCL: a dict of the
        first value of each key, or None when they are not an object."""
        text, end = chunk.text, chunk.end
        open_pos = chunk.pos
        p = open_pos + 1
        opened, closed = 1, 0
        quoted = False
        while p < end:
            c = text[p]
            if quoted:
                if c == '"' and text[p - 1] != "\\":
                    quoted = False
            elif c == "(":
                opened += 1
            elif c == ")":
                closed += 1
                if closed == opened:
                    break
            elif c == '"':
                quoted = True
            p += 1
        else:
            raise self.error(f"'(' after .{name} is never closed; add ')'", open_pos)
        sub = _Parser(self.user_vars)
        args = _Chunk(text, chunk.filename, chunk.variables, chunk.includes)
        args.pos = open_pos + 1
        args.end = p
        sub.read(args)
        chunk.pos = p + 1
        if sub.top.kind != _OBJECT:
            return None
        return {key: _python(chain[0]) for key, chain in sub.top.value.items()}

    def macro_value(self, chunk, name):
        text, end = chunk.text, chunk.end
        p = chunk.pos
        c = text[p]
        if c == '"':
            q, _, _ = self.lex_dquoted(chunk, p)
            # libucl hands the text between the quotes over unescaped.
            value = text[p + 1 : q - 1]
        elif c == "{":
            q = p + 1
            while q < end and text[q] in _WS_ALL:
                q += 1
            close = text.find("}", q, end)
            if close < 0:
                raise self.error(f"'{{' after .{name} is never closed; add '}}'", p)
            value = text[q:close]
            q = close + 1
        else:
            q = p
            while q < end and text[q] not in _VALUE_END:
                q += 1
            value = text[p:q]
        while q < end and (text[q] in _WS_ALL or text[q] == ";"):
            q += 1
        chunk.pos = q
        return value

    def resolve(self, path):
        """``path`` taken from the directory of the file being read."""
        return os.path.join(self.chunk.base_dir, path)

    def include(self, name, value, args, pos):
        params = _IncludeParams(soft=name == "try_include")
        sign = name == "includes"
        for key, arg in (args or {}).items():
            if isinstance(arg, bool):
                option = _option(key, ("try", "sign", "glob", "url", "prefix"))
                if option == "try":
                    params.must_exist = not arg
                elif option == "sign":
                    sign = arg
                elif option == "glob":
                    params.glob = arg
                elif option == "url":
                    params.url = arg
                elif option == "prefix":
                    params.use_prefix = arg
            elif isinstance(arg, str):
                option = _option(key, ("key", "target", "duplicate"))
                if option == "key":
                    params.key = arg
                elif option == "target":
                    params.target = arg
                elif option == "duplicate" and arg in (
                    _APPEND,
                    _MERGE,
                    _REWRITE,
                    _ERROR,
                ):
                    params.strategy = arg
            elif isinstance(arg, list):
                if _option(key, ("path",)):
                    # Search paths stay for every later include, as in libucl.
                    self.include_paths = [
                        self.resolve(d) for d in arg if isinstance(d, str)
                    ]
            elif _is_int(arg) and _option(key, ("priority",)):
                params.priority = arg
        if sign:
            raise self.error(
                f".{name} with a signature check is not supported: bitelab "
                "cannot verify signatures; use .include without sign=true",
                pos,
            )
        if params.url and "://" in value:
            raise self.error(
                "including a URL is not supported; copy the file next to the "
                "board file and include it by path",
                pos,
            )
        if self.include_paths is None:
            self.include_file(self.resolve(value), value, params, pos)
            return
        found = False
        for directory in self.include_paths:
            if self.include_file(f"{directory}/{value}", value, params, pos, True):
                found = True
                if not params.glob:
                    break
        if not found and params.must_exist and not params.soft:
            raise self.error(f"cannot find {value!r} in the include path", pos)

    def include_file(self, path, shown, params, pos, search=False):
        """Include ``path`` (all its matches with glob=true); whether a file
        was found."""
        if params.glob and ("*" in path or "?" in path):
            matches = sorted(glob.glob(path))
            if not matches:
                if params.must_exist and not params.soft and not search:
                    raise self.error(f"no file matches {shown!r}", pos)
                return False
            for match in matches:
                self.include_single(match, params, pos)
            return True
        if search and not os.path.exists(path):
            return False
        return self.include_single(path, params, pos)

    def include_single(self, path, params, pos):
        real = os.path.realpath(path)
        if not os.path.exists(real):
            # libucl stops reading the whole text after a missing
            # .try_include; here the rest is read.
            if params.soft or not params.must_exist:
                return False
            raise self.error(f"cannot include {path!r}: no such file", pos)
        chunk = self.chunk
        if real in chunk.includes:
            raise self.error(f"{path!r} includes itself; remove the loop", pos)
        if len(chunk.includes) >= MAX_INCLUDE_DEPTH:
            raise self.error(
                f"includes nested more than {MAX_INCLUDE_DEPTH - 1} deep; "
                "look for an include loop",
                pos,
            )
        # Only regular files: a device or FIFO could block or never end.
        if not os.path.isfile(real):
            if params.soft or not params.must_exist:
                return False
            raise self.error(f"cannot include {path!r}: not a regular file", pos)
        try:
            with open(real, "rb") as f:
                data = f.read()
        except OSError as exc:
            if params.soft or not params.must_exist:
                return False
            raise self.error(f"cannot include {path!r}: {exc.strerror}", pos) from None
        text = _decode(data, path)
        _check_bom(text, path)
        sub = self.chunk_for(
            text,
            path,
            real,
            {"FILENAME": real, "CURDIR": os.path.dirname(real)},
            chunk.includes + (real,),
        )
        sub.priority = params.priority
        sub.strategy = params.strategy
        prefixed = self.prefix_frame(params, real, pos)
        sub.base_depth = len(self.stack)
        state = self.state
        if text:
            self.read(sub)
        if prefixed:
            self.stack.pop()
        self.state = state
        return True

    def prefix_frame(self, params, real, pos):
        """With key= (or prefix=true), open the object the included keys go
        into; whether one was opened."""
        if params.key is None and params.use_prefix:
            name = os.path.basename(real)
            stem, ext = os.path.splitext(name)
            # libucl names the key once, after the first file it includes.
            params.key = stem if ext in (".conf", ".ucl") else name
        if params.key is None:
            return False
        frame = self.stack[-1]
        container = frame.node.value
        chain = container.get(params.key)
        old = chain[0] if chain else None
        nest = _Node(params.priority, _OBJECT, {})
        if params.target.lower() == "array":
            if old is None:
                container[params.key] = [_Node(params.priority, _ARRAY, [nest])]
            elif old.kind == _ARRAY:
                old.value.append(nest)
            else:
                container[params.key] = [_Node(0, _ARRAY, [old, nest])]
        elif old is None:
            container[params.key] = [nest]
        elif old.kind == _OBJECT:
            nest = old
        else:
            raise self.error(
                f"cannot include into key {params.key!r}: it holds "
                f"{'an array' if old.kind == _ARRAY else 'a ' + old.kind}, "
                "not an object",
                pos,
            )
        self.stack.append(_Frame(nest, frame.level, frame.obrace, pos))
        self.cur = nest
        return True

    def priority(self, value, args, pos):
        priority = None
        for key, arg in (args or {}).items():
            if _is_int(arg) and _option(key, ("priority",)):
                priority = arg
        if value:
            number, rest = _strtol(value)
            if number is None or rest:
                raise self.error(
                    f"invalid priority {value!r}; write a whole number, "
                    "as in .priority 5",
                    pos,
                )
            priority = number
        if priority is None:
            raise self.error("missing priority; write it as in .priority 5", pos)
        self.chunk.priority = priority

    def load_macro(self, value, args, pos):
        soft = trim = escape = False
        key = None
        target = "string"
        priority = 0
        for name, arg in (args or {}).items():
            if isinstance(arg, bool):
                option = _option(name, ("try", "multiline", "escape", "trim"))
                if option == "try":
                    soft = arg
                elif option == "escape":
                    escape = arg
                elif option == "trim":
                    trim = arg
            elif isinstance(arg, str):
                option = _option(name, ("key", "target"))
                if option == "key":
                    key = arg
                elif option == "target":
                    target = arg
            elif _is_int(arg) and _option(name, ("priority",)):
                priority = arg
        if not key:
            raise self.error('.load needs a key: write .load(key="name") "file"', pos)
        if not value:
            raise self.error("missing file name after .load", pos)
        if target.lower() not in ("string", "int"):
            # libucl silently loads nothing.
            raise self.error(
                f'unknown .load target {target!r}; use target="string" or '
                'target="int"',
                pos,
            )
        path = self.resolve(value)
        try:
            if not os.path.isfile(path):
                raise FileNotFoundError(2, "no such regular file")
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            if soft:
                return
            raise self.error(f"cannot load {path!r}: {exc.strerror}", pos) from None
        container = self.stack[-1].node.value
        if key in container:
            raise self.error(f".load: key {key!r} already exists", pos)
        content = _decode(data, path)
        if target.lower() == "int":
            number, _ = _strtol(content.split("\0", 1)[0])
            loaded = 0 if number is None else number
        elif not content:
            # libucl makes no value of an empty file.
            return
        else:
            if trim:
                content = content.strip(_WS_ALL)
            loaded = _escape_loaded(content) if escape else content
        container[key] = [_Node(priority, _SCALAR, loaded)]

    def inherit(self, value, args, pos):
        top = self.top
        chain = top.value.get(value) if top.kind == _OBJECT else None
        parent = chain[0] if chain else None
        if parent is None or parent.kind != _OBJECT:
            raise self.error(
                f".inherit: no top-level object {value!r} to inherit from", pos
            )
        target = self.stack[-1].node
        replace = (args or {}).get("replace") is True
        for key, keys in list(parent.value.items()):
            if not replace and key in target.value:
                continue
            copies = _copy_chain(keys)
            if not replace:
                copies[0].inherited = True
            target.value.setdefault(key, []).extend(copies)


def _block_comment_end(text, start, end):
    """The end of the nestable ``/* */`` comment at ``start``, or None when
    it is never closed.  As in libucl, comment markers inside double quotes
    in the comment do not count."""
    i = start + 2
    nesting = 1
    quoted = False
    while i < end:
        c = text[i]
        if c == '"' and text[i - 1] != "\\":
            quoted = not quoted
        elif not quoted:
            if c == "*" and text.startswith("/", i + 1, end):
                nesting -= 1
                i += 2
                if nesting == 0:
                    return i
                continue
            if c == "/" and text.startswith("*", i + 1, end):
                nesting += 1
                i += 2
                continue
        i += 1
    return None


def _scan_word(text, p, end):
    """The end of the bare word at ``p`` (balanced brackets belong to it, a
    backslash escapes the next character), whether it names variables and
    whether it has escapes."""
    curly = [0, 0]
    square = [0, 0]
    var_expand = need_unescape = False
    while p < end:
        c = text[p]
        if c == "{":
            curly[0] += 1
        elif c == "}":
            curly[1] += 1
            if curly[1] <= curly[0]:
                p += 1
                continue
        elif c == "[":
            square[0] += 1
        elif c == "]":
            square[1] += 1
            if square[1] <= square[0]:
                p += 1
                continue
        elif c == "$":
            var_expand = True
        elif c == "\\":
            need_unescape = True
            p = min(p + 2, end)
            continue
        if c in _VALUE_END or text.startswith("/*", p, end):
            break
        p += 1
    return p, var_expand, need_unescape


def _scaled(lv, dv, factor):
    return lv * factor if dv is None else dv * factor


def _suffix_end(value, text, q, end):
    if q < end and text[q] not in _VALUE_END:
        return None
    return value, q


def _time(lv, seconds, is_hex, text, q, end):
    # A hex number keeps its integer value: libucl drops the time suffix.
    return _suffix_end(lv if is_hex else seconds, text, q, end)


def _names_variable(s, variables):
    """Whether ``s`` names a known variable (libucl's first pass)."""
    i = 0
    n = len(s)
    while i < n:
        if s[i] != "$" or i + 1 == n:
            i += 1
            continue
        i += 1
        if s[i] == "{":
            close = s.find("}", i + 1)
            if close >= 0 and any(s[i + 1 : close] == name for name, _ in variables):
                return True
        elif s[i] == "$":
            i += 1
        elif any(s.startswith(name, i) for name, _ in variables):
            return True
    return False


def _escape_loaded(s):
    """libucl's escaping of a .load(escape=true) file."""
    table = {
        "\n": "\\n",
        "\r": "\\r",
        "\b": "\\b",
        "\t": "\\t",
        "\f": "\\f",
        "\0": "\\u0000",
        "\v": "\\u000B",
        "\\": "\\\\",
        '"': '\\"',
    }
    return "".join(table.get(c, c) for c in s)
