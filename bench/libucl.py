"""Read UCL with a libucl shared library through ctypes, for comparisons.

bitelab never uses libucl; the bench scripts load one, when given its path,
to compare bitelab's reader with it.  ``loads`` and ``load`` return what
libucl's parse gives as plain Python values (the same shapes as
``bitelab.ucl``), or raise ``LibUCLError`` with libucl's message.
"""

import ctypes
import os

_VP = ctypes.c_void_p

# ucl_type_t
_OBJECT, _ARRAY, _INT, _FLOAT, _STRING, _BOOLEAN, _TIME, _USERDATA, _NULL = range(9)


class LibUCLError(Exception):
    """libucl refused the text; ``args`` holds its message, line and column."""


class LibUCL:
    """A loaded libucl shared library."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        sig = {
            "ucl_parser_new": (_VP, [ctypes.c_int]),
            "ucl_parser_add_chunk": (
                ctypes.c_bool,
                [_VP, ctypes.c_char_p, ctypes.c_size_t],
            ),
            "ucl_parser_add_file": (ctypes.c_bool, [_VP, ctypes.c_char_p]),
            "ucl_parser_set_filevars": (
                ctypes.c_bool,
                [_VP, ctypes.c_char_p, ctypes.c_bool],
            ),
            "ucl_parser_register_variable": (
                None,
                [_VP, ctypes.c_char_p, ctypes.c_char_p],
            ),
            "ucl_parser_get_error": (ctypes.c_char_p, [_VP]),
            "ucl_parser_get_object": (_VP, [_VP]),
            "ucl_parser_get_linenum": (ctypes.c_uint, [_VP]),
            "ucl_parser_get_column": (ctypes.c_uint, [_VP]),
            "ucl_parser_free": (None, [_VP]),
            "ucl_object_unref": (None, [_VP]),
            "ucl_object_type": (ctypes.c_int, [_VP]),
            "ucl_object_iterate_with_error": (
                _VP,
                [_VP, ctypes.POINTER(_VP), ctypes.c_bool, ctypes.POINTER(ctypes.c_int)],
            ),
            "ucl_object_toint": (ctypes.c_int64, [_VP]),
            "ucl_object_todouble": (ctypes.c_double, [_VP]),
            "ucl_object_toboolean": (ctypes.c_bool, [_VP]),
            "ucl_object_tolstring": (
                ctypes.POINTER(ctypes.c_char),
                [_VP, ctypes.POINTER(ctypes.c_size_t)],
            ),
            "ucl_object_keyl": (
                ctypes.POINTER(ctypes.c_char),
                [_VP, ctypes.POINTER(ctypes.c_size_t)],
            ),
        }
        for name, (restype, argtypes) in sig.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        self.lib = lib

    def _items(self, obj, expand):
        it = _VP(None)
        err = ctypes.c_int(0)
        while True:
            cur = self.lib.ucl_object_iterate_with_error(
                obj, ctypes.byref(it), expand, ctypes.byref(err)
            )
            if not cur:
                return
            yield cur

    def _text(self, fn, obj):
        size = ctypes.c_size_t()
        ptr = fn(obj, ctypes.byref(size))
        # Invalid UTF-8 (libucl accepts any bytes) stays visible as surrogates.
        return ctypes.string_at(ptr, size.value).decode("utf-8", "surrogateescape")

    def _value(self, obj):
        lib = self.lib
        kind = lib.ucl_object_type(obj)
        if kind == _OBJECT:
            result = {}
            for head in self._items(obj, True):
                key = self._text(lib.ucl_object_keyl, head)
                # A key given more than once is a chain: libucl's implicit array.
                chain = [self._value(v) for v in self._items(head, False)]
                result[key] = chain[0] if len(chain) == 1 else chain
            return result
        if kind == _ARRAY:
            return [self._value(v) for v in self._items(obj, True)]
        if kind == _INT:
            return lib.ucl_object_toint(obj)
        if kind in (_FLOAT, _TIME):
            return lib.ucl_object_todouble(obj)
        if kind == _STRING:
            return self._text(lib.ucl_object_tolstring, obj)
        if kind == _BOOLEAN:
            return lib.ucl_object_toboolean(obj)
        if kind == _NULL:
            return None
        raise LibUCLError(f"unexpected libucl object type {kind}")

    def _parse(self, feed, variables):
        lib = self.lib
        parser = lib.ucl_parser_new(0)
        try:
            for name, value in (variables or {}).items():
                lib.ucl_parser_register_variable(parser, name.encode(), value.encode())
            feed(parser)
            error = lib.ucl_parser_get_error(parser)
            if error is not None:
                raise LibUCLError(
                    error.decode("utf-8", "replace"),
                    lib.ucl_parser_get_linenum(parser),
                    lib.ucl_parser_get_column(parser),
                )
            obj = lib.ucl_parser_get_object(parser)
            if not obj:
                return {}
            try:
                return self._value(obj)
            finally:
                lib.ucl_object_unref(obj)
        finally:
            lib.ucl_parser_free(parser)

    def loads(self, text, variables=None):
        """Parse ``text`` (str or bytes) as libucl does for an in-memory chunk."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        buf = ctypes.create_string_buffer(data, len(data))

        def feed(parser):
            self.lib.ucl_parser_add_chunk(parser, buf, len(data))

        return self._parse(feed, variables)

    def load(self, path, variables=None):
        """Parse the file at ``path`` as ``ucl_parser_add_file`` does."""

        def feed(parser):
            self.lib.ucl_parser_add_file(parser, os.fsencode(path))

        return self._parse(feed, variables)
