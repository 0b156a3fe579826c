"""A reader for UCL, the configuration language of libucl.

``loads`` and ``load`` turn UCL text into plain Python values (``dict``,
``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``), giving what
libucl's JSON output of the same text would hold:

- ``key = value``, ``key: value``, ``key value``, ``key { ... }`` and
  ``key [ ... ]``, separated by ``;``, ``,`` or newlines (trailing ones are
  fine); the top level is an object, with or without braces;
- ``#``, ``//`` and nestable ``/* */`` comments;
- bare words (``/dev/ttyU0``, ``arm-armv7``), double-quoted strings with JSON
  escapes, single-quoted strings (only ``\\'`` and backslash-newline are
  escapes) and heredocs (``<<EOD`` ... ``EOD``);
- numbers: decimal, ``0x`` hex, floats, with libucl's suffixes ``k m g``
  (x1000), ``kb mb gb`` (x1024) and the time suffixes ``ms s min h d w y``,
  which give seconds as a float;
- ``true/false/yes/no/on/off`` (any case), ``null``, ``nan`` and ``inf``;
- a repeated key gathers its values into a list (libucl's implicit array);
- ``a b { ... }`` as shorthand for ``a { b { ... } }``;
- ``.include "file"`` and ``.try_include "file"``, relative to the directory
  of the including file;
- ``$VAR`` and ``${VAR}`` in double-quoted strings, bare words and heredocs,
  from the ``variables`` argument and the built-in ``FILENAME`` and ``CURDIR``
  (which take precedence); ``$$`` is a literal ``$`` in a string that also
  names a known variable, and stays ``$$`` otherwise.

Any problem raises ``UCLError``, which names the file, line and column.
"""

import math
import os
import re

__all__ = ["UCLError", "load", "loads"]

# Deep enough for any real configuration, shallow enough that the recursive
# parser stays far from Python's recursion limit.
MAX_DEPTH = 100
# libucl's own limit on nested includes.
MAX_INCLUDE_DEPTH = 16

_WS = " \t"
_WS_ALL = " \t\n\r\v\f"
# Characters that end a bare value (libucl's "atom end" set).
_ATOM_END = "\n\r#,;\0"
_KEY_END = " \t\n\r=:{["
_HEX = frozenset("0123456789abcdefABCDEF")
_JSON_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_BOOLEANS = {
    "true": True,
    "yes": True,
    "on": True,
    "false": False,
    "no": False,
    "off": False,
}
_HEREDOC = re.compile(r"<<([A-Z]+)\r?\n")
_NUMBER = re.compile(
    r"""
    (?P<neg>-)?
    (?:
        0[xX](?P<hex>[0-9a-fA-F]+)
      | (?P<dec>[0-9]+(?P<frac>\.[0-9]*)?(?P<exp>[eE][+-]?[0-9]+)?)
    )
    (?P<suffix>[a-zA-Z]*)
    \Z
    """,
    re.VERBOSE,
)
_INT64_MAX = 2**63 - 1
_SIZE_SUFFIXES = {"k": 1000, "m": 1000**2, "g": 1000**3}
_BYTE_SUFFIXES = {"kb": 1024, "mb": 1024**2, "gb": 1024**3}
# libucl reads "ks" and "gs" as thousands and billions of seconds.
_TIME_SUFFIXES = {
    "ms": 0.001,
    "ks": 1000.0,
    "gs": 1e9,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}


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
    """Parse UCL ``text`` into a ``dict``.

    ``filename`` is used in error messages, for ``$FILENAME``/``$CURDIR`` and
    to resolve relative ``.include`` paths (the current directory when it is
    ``"<string>"``).  ``variables`` maps names to the strings that ``$NAME``
    and ``${NAME}`` expand to.
    """
    text = text.removeprefix("\ufeff")
    if filename == "<string>":
        file_vars = {"FILENAME": "undef", "CURDIR": _getcwd()}
        base_dir = file_vars["CURDIR"]
        includes = ()
    else:
        real = os.path.realpath(filename)
        base_dir = os.path.dirname(real)
        file_vars = {"FILENAME": real, "CURDIR": base_dir}
        includes = (real,)
    user_vars = {str(k): str(v) for k, v in (variables or {}).items() if str(k)}
    parser = _Parser(text, filename, user_vars, file_vars, base_dir, includes, 0)
    return parser.parse_document(_Obj()).finish()


def load(path, variables=None):
    """Read and parse the UCL file at ``path`` into a ``dict``.

    Relative ``.include`` paths are taken from the file's directory.  A file
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
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        raise UCLError(
            filename, line, column, "the file is not valid UTF-8; re-save it as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")
    return text


def _describe(c):
    if c == "\n":
        return "a newline"
    if c.isprintable() and not c.isspace():
        return repr(c)
    return f"U+{ord(c):04X}"


def _is_key_start(c):
    return (c.isascii() and (c.isalnum() or c in "_/")) or ord(c) >= 0x80


def _is_key_char(c):
    return (c.isascii() and (c.isalnum() or c in "_-./")) or ord(c) >= 0x80


def _is_hex4(s, i):
    return len(s) >= i + 4 and all(c in _HEX for c in s[i : i + 4])


def _decode_u(s, i):
    """Decode the valid ``\\uXXXX`` at ``s[i]``, joining a surrogate pair.

    Returns the character and the index after the escape(s).  A lone
    surrogate becomes U+FFFD so the result can always be encoded.
    """
    cp = int(s[i + 2 : i + 6], 16)
    j = i + 6
    if 0xD800 <= cp < 0xDC00 and s.startswith("\\u", j) and _is_hex4(s, j + 2):
        low = int(s[j + 2 : j + 6], 16)
        if 0xDC00 <= low < 0xE000:
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
            j += 6
    if 0xD800 <= cp < 0xE000:
        cp = 0xFFFD
    return chr(cp), j


def _unescape_bare(raw):
    """Apply JSON escapes to a bare word; unknown ones keep just the character."""
    out = []
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
        elif raw[i + 1] == "u" and _is_hex4(raw, i + 2):
            ch, i = _decode_u(raw, i)
            out.append(ch)
        else:
            out.append(_JSON_ESCAPES.get(raw[i + 1], raw[i + 1]))
            i += 2
    return "".join(out)


class _Obj:
    """An object being built: each key keeps every value given to it."""

    __slots__ = ("values",)

    def __init__(self):
        self.values = {}

    def add(self, key, value):
        self.values.setdefault(key, []).append(value)

    def finish(self):
        # A key given more than once becomes a list, as libucl's implicit
        # arrays do in its JSON output.
        return {k: v[0] if len(v) == 1 else v for k, v in self.values.items()}


class _Parser:
    """Recursive-descent parser over one file's text."""

    def __init__(self, text, filename, user_vars, file_vars, base_dir, includes, depth):
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.filename = filename
        self.user_vars = user_vars
        self.vars = {**user_vars, **file_vars}
        # Longest name first, so that $AB is not read as $A followed by "B".
        self.var_names = sorted(self.vars, key=len, reverse=True)
        self.base_dir = base_dir
        self.includes = includes
        self.depth = depth
        self.after_container = False

    def error(self, reason, pos=None):
        """A ``UCLError`` at ``pos`` (default: the current position)."""
        if pos is None:
            pos = self.pos
        pos = min(pos, self.n)
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return UCLError(self.filename, line, column, reason)

    # Whitespace and comments

    def skip_comment(self):
        """Skip a comment starting at the current position; False if none."""
        text, pos = self.text, self.pos
        if text[pos] == "#" or text.startswith("//", pos):
            end = text.find("\n", pos)
            self.pos = self.n if end < 0 else end + 1
            return True
        if text.startswith("/*", pos):
            self.pos = self.block_comment_end(pos)
            return True
        return False

    def block_comment_end(self, start):
        text, n = self.text, self.n
        i = start + 2
        nesting = 1
        quoted = False
        while i < n:
            c = text[i]
            # libucl ignores comment markers inside double quotes in a comment.
            if c == '"' and text[i - 1] != "\\":
                quoted = not quoted
            elif not quoted:
                if c == "*" and text.startswith("/", i + 1):
                    nesting -= 1
                    i += 2
                    if nesting == 0:
                        return i
                    continue
                if c == "/" and text.startswith("*", i + 1):
                    nesting += 1
                    i += 2
                    continue
            i += 1
        raise self.error("unterminated comment; close it with '*/'", start)

    def skip_space(self):
        """Skip whitespace, newlines and comments."""
        text, n = self.text, self.n
        while self.pos < n:
            if text[self.pos] in _WS_ALL:
                self.pos += 1
            elif not self.skip_comment():
                return

    # Objects and arrays

    def parse_document(self, target):
        """Parse the whole text as an object, adding its keys to ``target``."""
        text = self.text
        self.skip_space()
        if self.pos < self.n and text[self.pos] == "[":
            raise self.error(
                "the top level must be an object, not an array; "
                "put the list under a key"
            )
        if self.pos < self.n and text[self.pos] == "{":
            open_pos = self.pos
            self.pos += 1
            self.parse_members(target, open_pos, self.depth + 1)
            while True:
                self.skip_space()
                if self.pos >= self.n:
                    break
                if text[self.pos] not in ",;":
                    raise self.error(
                        "unexpected text after the closing '}' of the top-level "
                        "object; remove it or move it inside the braces"
                    )
                self.pos += 1
        else:
            self.parse_members(target, None, self.depth)
        return target

    def parse_members(self, obj, open_pos, depth):
        """Parse ``key value`` members up to the ``}`` matching ``open_pos``.

        ``open_pos`` is None for a top level without braces, which ends at
        the end of the text.
        """
        text = self.text
        while True:
            self.skip_space()
            if self.pos >= self.n:
                if open_pos is not None:
                    raise self.error(
                        "'{' is never closed; add a matching '}'", open_pos
                    )
                return
            c = text[self.pos]
            if c == "}":
                if open_pos is None:
                    raise self.error("'}' without a matching '{'; remove it")
                self.pos += 1
                return
            if c == ".":
                self.parse_macro(obj, depth)
                continue
            self.parse_member(obj, depth)
            self.after_value("}")

    def parse_member(self, obj, depth):
        key = self.parse_key()
        text = self.text
        got_sep = False
        while self.pos < self.n:
            c = text[self.pos]
            if c in _WS:
                self.pos += 1
            elif c in "=:":
                if got_sep:
                    raise self.error(
                        f"unexpected {c!r} after key {key!r}; use one '=' or ':'"
                    )
                got_sep = True
                self.pos += 1
            elif not self.skip_comment():
                break
        if self.pos >= self.n:
            raise self.error(f"missing value for key {key!r}")
        if not got_sep and self.nested_key_follows():
            if depth >= MAX_DEPTH:
                raise self.error(f"nesting deeper than {MAX_DEPTH} levels; flatten it")
            sub = _Obj()
            self.parse_member(sub, depth + 1)
            obj.add(key, sub.finish())
        else:
            obj.add(key, self.parse_value(depth, key))

    def nested_key_follows(self):
        """Whether ``key other { ... }`` shorthand follows: a ``{``/``[`` later
        on the line rather than at the start of the value."""
        text, n = self.text, self.n
        i = self.pos
        if text[i] in "{[":
            return False
        while i < n:
            c = text[i]
            if c in "{[":
                return True
            if c in ",;\n\r}]#" or text.startswith(("/*", "//"), i):
                return False
            if c in "\"'":
                # Braces inside a quoted string do not count.
                i += 1
                while i < n and text[i] != c:
                    i += 2 if text[i] == "\\" else 1
            i += 1
        return False

    def parse_key(self):
        text, n = self.text, self.n
        start = self.pos
        c = text[start]
        if c == '"':
            key = self.lex_dquoted()
            if not key:
                raise self.error("empty keys are not allowed", start)
            return key
        if not _is_key_start(c):
            raise self.error(
                f"expected a key, found {_describe(c)}; "
                "keys start with a letter, a digit, '_' or '/'"
            )
        i = start + 1
        while i < n and _is_key_char(text[i]):
            i += 1
        self.pos = i
        key = text[start:i]
        if (
            i < n
            and text[i] not in _KEY_END
            and not text.startswith(("#", "/*", "//"), i)
        ):
            raise self.error(
                f"expected '=', ':' or a value after key {key!r}, found "
                f"{_describe(text[i])}; quote keys holding other characters"
            )
        return key

    def after_value(self, closer):
        """Consume the separators after a value, stopping before ``closer``."""
        text = self.text
        got_sep = self.after_container
        while self.pos < self.n:
            c = text[self.pos]
            if c in _WS:
                self.pos += 1
            elif c in "\n\r,;":
                self.pos += 1
                got_sep = True
            elif self.skip_comment():
                got_sep = True
            elif c in "}]":
                if c != closer:
                    what = "an object" if closer == "}" else "an array"
                    raise self.error(
                        f"unexpected {c!r} inside {what}; close it with {closer!r}"
                    )
                return
            elif got_sep:
                return
            else:
                raise self.error(
                    f"expected ';', ',' or a newline after the value, found "
                    f"{_describe(c)}"
                )

    def parse_array(self, open_pos, depth):
        text = self.text
        items = []
        while True:
            self.skip_space()
            if self.pos >= self.n:
                raise self.error("'[' is never closed; add a matching ']'", open_pos)
            if text[self.pos] == "]":
                self.pos += 1
                return items
            items.append(self.parse_value(depth))
            self.after_value("]")

    # Values

    def parse_value(self, depth, key=None):
        """Parse one value; sets ``after_container`` for ``{}``/``[]`` values,
        whose closing bracket already separates them from what follows."""
        self.skip_space()
        if self.pos >= self.n:
            raise self.error(self.missing_value(key))
        text = self.text
        c = text[self.pos]
        if c in "{[":
            if depth >= MAX_DEPTH:
                raise self.error(f"nesting deeper than {MAX_DEPTH} levels; flatten it")
            open_pos = self.pos
            self.pos += 1
            if c == "{":
                obj = _Obj()
                self.parse_members(obj, open_pos, depth + 1)
                value = obj.finish()
            else:
                value = self.parse_array(open_pos, depth + 1)
            self.after_container = True
            return value
        self.after_container = False
        if c == '"':
            start = self.pos
            value = self.lex_dquoted()
            return self.expand(value) if "$" in text[start : self.pos] else value
        if c == "'":
            return self.lex_squoted()
        if c == "<":
            value = self.lex_heredoc()
            if value is not None:
                return value
        return self.parse_atom(key)

    def missing_value(self, key):
        if key is None:
            return "missing value"
        return f"missing value for key {key!r}"

    def parse_atom(self, key):
        """A bare word: null, a boolean, a number or an unquoted string."""
        text, n = self.text, self.n
        start = i = self.pos
        curly = square = 0
        has_escape = False
        while i < n:
            c = text[i]
            if c == "\\":
                has_escape = True
                i += 2
                continue
            if c == "{":
                curly += 1
            elif c == "[":
                square += 1
            elif c == "}":
                # A balanced pair of brackets belongs to the word, as in libucl.
                if not curly:
                    break
                curly -= 1
            elif c == "]":
                if not square:
                    break
                square -= 1
            elif c in _ATOM_END or (
                # "/*" always starts a comment; "//" only after whitespace,
                # so that paths and URLs keep their double slashes.
                c == "/"
                and (
                    text.startswith("/*", i)
                    or (text.startswith("//", i) and i > start and text[i - 1] in _WS)
                )
            ):
                break
            i += 1
        i = min(i, n)
        self.pos = i
        raw = text[start:i].rstrip(_WS)
        if not raw:
            raise self.error(self.missing_value(key), start)
        if raw[0] in "-0123456789":
            number = self.parse_number(raw, start)
            if number is not None:
                return number
        if raw == "null":
            return None
        if raw in ("nan", "inf"):
            return float(raw)
        boolean = _BOOLEANS.get(raw.lower())
        if boolean is not None:
            return boolean
        value = _unescape_bare(raw) if has_escape else raw
        return self.expand(value) if "$" in raw else value

    def parse_number(self, raw, pos):
        """The number ``raw`` spells with libucl's suffixes, or None."""
        m = _NUMBER.match(raw)
        if m is None:
            return None
        suffix = m["suffix"].lower()
        if m["hex"] is not None:
            value = int(m["hex"], 16)
            is_float = False
        elif m["frac"] is None and m["exp"] is None:
            value = int(m["dec"])
            is_float = False
        else:
            value = float(m["dec"])
            is_float = True
            mantissa = re.split("[eE]", m["dec"])[0]
            # strtod's ERANGE: overflow, or non-zero digits that underflow to 0.
            if math.isinf(value) or (value == 0 and mantissa.strip("0.")):
                raise self.error(f"number {raw!r} is out of range", pos)
        if not is_float and value > _INT64_MAX:
            raise self.error(f"number {raw!r} is out of range", pos)
        if suffix in _SIZE_SUFFIXES:
            value *= _SIZE_SUFFIXES[suffix]
        elif suffix in _BYTE_SUFFIXES:
            # libucl truncates a fractional size to an integer first.
            value = int(value) * _BYTE_SUFFIXES[suffix]
        elif suffix in _TIME_SUFFIXES and m["hex"] is None:
            value = float(value) * _TIME_SUFFIXES[suffix]
        elif suffix:
            return None
        return -value if m["neg"] else value

    def lex_dquoted(self):
        """A JSON string starting at the current ``"``; no variable expansion."""
        text, n = self.text, self.n
        start = self.pos
        i = seg = start + 1
        out = []
        while i < n:
            c = text[i]
            if c == '"':
                out.append(text[seg:i])
                self.pos = i + 1
                return "".join(out)
            if c == "\\":
                out.append(text[seg:i])
                if i + 1 >= n:
                    break
                e = text[i + 1]
                if e == "u":
                    if not _is_hex4(text, i + 2):
                        raise self.error(
                            "invalid \\u escape; write four hex digits, as in \\u00e9",
                            i,
                        )
                    ch, i = _decode_u(text, i)
                    out.append(ch)
                elif ord(e) < 0x1F:
                    raise self.error(
                        f"{_describe(e)} after a backslash in a double-quoted "
                        "string; close the string on this line or write \\n",
                        i + 1,
                    )
                else:
                    # Unknown escapes keep the character, as in libucl.
                    out.append(_JSON_ESCAPES.get(e, e))
                    i += 2
                seg = i
                continue
            # libucl rejects raw control characters below 0x1F.
            if ord(c) < 0x1F:
                if c == "\n":
                    reason = (
                        "newline inside a double-quoted string; close the string "
                        "on this line or write \\n"
                    )
                else:
                    reason = (
                        f"control character {_describe(c)} inside a double-quoted "
                        f"string; write it as \\u{ord(c):04x}"
                    )
                raise self.error(reason, i)
            i += 1
        raise self.error(
            "unterminated double-quoted string; add the closing '\"'", start
        )

    def lex_squoted(self):
        """A single-quoted string: ``\\'`` is a quote, backslash-newline is
        dropped, every other character is literal."""
        text, n = self.text, self.n
        start = self.pos
        i = start + 1
        out = []
        while i < n:
            c = text[i]
            if c == "'":
                self.pos = i + 1
                return "".join(out)
            if c == "\\" and i + 1 < n:
                e = text[i + 1]
                i += 2
                if e == "'":
                    out.append("'")
                elif e == "\r":
                    if text.startswith("\n", i):
                        i += 1
                elif e != "\n":
                    out.append("\\" + e)
                continue
            out.append(c)
            i += 1
        raise self.error(
            'unterminated single-quoted string; add the closing "\'"', start
        )

    def lex_heredoc(self):
        """A ``<<TERM`` heredoc at the current position, or None if there is
        none (the text is then read as a bare word)."""
        text, n = self.text, self.n
        m = _HEREDOC.match(text, self.pos)
        if m is None:
            return None
        term = m[1]
        body_start = line = m.end()
        while True:
            if text.startswith(term, line):
                after = line + len(term)
                if after >= n or text[after] in "\r\n;,":
                    break
            nl = text.find("\n", line)
            if nl < 0:
                raise self.error(
                    f"heredoc <<{term} is never closed; end it with a line "
                    f"holding only {term}"
                )
            line = nl + 1
        body = text[body_start:line]
        # The newline before the terminator is not part of the value.
        if body.endswith("\n"):
            body = body[:-1]
            body = body.removesuffix("\r")
        self.pos = line + len(term)
        return self.expand(body) if "$" in body else body

    def expand(self, s):
        """Expand ``$NAME``, ``${NAME}`` and ``$$`` as libucl does: only when
        ``s`` names at least one known variable; unknown names stay as they
        are."""
        out = []
        found = False
        i = 0
        n = len(s)
        while i < n:
            c = s[i]
            if c != "$":
                out.append(c)
                i += 1
                continue
            if s.startswith("$", i + 1):
                out.append("$")
                i += 2
                continue
            if s.startswith("{", i + 1):
                end = s.find("}", i + 2)
                name = s[i + 2 : end] if end >= 0 else None
                if name in self.vars:
                    out.append(self.vars[name])
                    found = True
                    i = end + 1
                else:
                    out.append("${")
                    i += 2
                continue
            for name in self.var_names:
                if s.startswith(name, i + 1):
                    out.append(self.vars[name])
                    found = True
                    i += 1 + len(name)
                    break
            else:
                out.append("$")
                i += 1
        return "".join(out) if found else s

    # Macros

    def parse_macro(self, obj, depth):
        text, n = self.text, self.n
        start = self.pos
        i = start + 1
        while i < n and text[i] not in _WS_ALL and text[i] not in "(\"'{;":
            i += 1
        name = text[start + 1 : i]
        self.pos = i
        if name not in ("include", "try_include"):
            if name in ("includes", "priority", "load", "inherit"):
                reason = f"the .{name} macro is not supported; use .include"
            elif name:
                reason = f"unknown macro .{name}; only .include and .try_include exist"
            else:
                reason = "'.' must start a macro such as .include \"file\""
            raise self.error(reason, start)
        if i < n and text[i] == "(":
            raise self.error(
                f'arguments to .{name} are not supported; write .{name} "file"', i
            )
        self.skip_space()
        if self.pos >= n:
            raise self.error(f"missing file name after .{name}")
        c = text[self.pos]
        if c == '"':
            arg = self.lex_dquoted()
        elif c == "'":
            arg = self.lex_squoted()
        elif c == "{":
            end = text.find("}", self.pos)
            if end < 0:
                raise self.error(f"unclosed '{{' after .{name}; add '}}'")
            arg = text[self.pos + 1 : end].strip()
            self.pos = end + 1
        else:
            end = self.pos
            while end < n and text[end] not in _ATOM_END and text[end] not in "]}":
                end += 1
            arg = text[self.pos : end].rstrip(_WS)
            self.pos = end
        if not arg:
            raise self.error(f"missing file name after .{name}", start)
        while self.pos < n and (text[self.pos] in _WS_ALL or text[self.pos] == ";"):
            self.pos += 1
        self.include(obj, self.expand(arg), start, depth, name == "include")

    def include(self, obj, arg, pos, depth, must_exist):
        """Parse the file ``arg`` into ``obj``; a missing file is an error
        only when ``must_exist``."""
        path = os.path.join(self.base_dir, arg)
        if len(self.includes) >= MAX_INCLUDE_DEPTH:
            raise self.error(
                f"includes nested more than {MAX_INCLUDE_DEPTH} deep; "
                "look for an include loop",
                pos,
            )
        try:
            real = os.path.realpath(path)
            if real in self.includes:
                raise self.error(f"{arg!r} includes itself; remove the loop", pos)
            # Only regular files: a device or FIFO could block or never end.
            if not os.path.isfile(real):
                if not must_exist:
                    return
                raise self.error(f"cannot include {path!r}: not an existing file", pos)
            with open(real, "rb") as f:
                data = f.read()
        except (OSError, ValueError) as exc:
            if not must_exist:
                return
            reason = getattr(exc, "strerror", None) or str(exc)
            raise self.error(f"cannot include {path!r}: {reason}", pos) from None
        base_dir = os.path.dirname(real)
        sub = _Parser(
            _decode(data, path),
            path,
            self.user_vars,
            {"FILENAME": real, "CURDIR": base_dir},
            base_dir,
            self.includes + (real,),
            depth,
        )
        sub.parse_document(obj)
