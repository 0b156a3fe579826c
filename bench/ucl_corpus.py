"""How many files of libucl's own test corpus bitelab's reader reads as libucl.

libucl's corpus is the ``tests/basic/*.in`` files of a libucl source checkout,
each with the ``.res`` file libucl's test emits for it (every file except
``10.in`` has one).  Two comparisons:

- ``.res``: bitelab's value for ``N.in`` against bitelab's value for
  ``N.res`` (libucl's own rendering of what it read, keys lowercased as its
  test does); ``10.in``, which has no ``.res``, agrees when it reads;
- ``--libucl PATH``: against a libucl shared library called through ctypes,
  value for value, or both refusing the file.

Both run as libucl's test does: from the corpus directory (libucl resolves
relative includes there), with the variable ``ABI=unknown``.

Run: ``python bench/ucl_corpus.py LIBUCL_CHECKOUT/tests/basic [--libucl
LIBUCL_CHECKOUT/build/libucl.so] [-v]``
"""

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bitelab import ucl

VARIABLES = {"ABI": "unknown"}


def canonical(value):
    """``value`` with types made explicit, so 1, 1.0 and True differ and
    NaN equals NaN."""
    if isinstance(value, dict):
        return ("object", [(k, canonical(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("array", [canonical(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def lowercase_keys(value):
    if isinstance(value, dict):
        return {k.lower(): lowercase_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lowercase_keys(v) for v in value]
    return value


def bitelab_read(path, variables=VARIABLES):
    try:
        return "ok", ucl.load(path, variables=variables)
    except ucl.UCLError as e:
        return "error", str(e)


def compare_res(path):
    """Whether bitelab reads ``path`` to the value of libucl's ``.res``."""
    status, value = bitelab_read(path)
    res = path.with_suffix(".res")
    if not res.exists():
        return status == "ok", value
    if status != "ok":
        return False, value
    # A .res file holds expanded values: reading it with ABI defined would
    # expand them a second time.
    expected_status, expected = bitelab_read(res, variables=None)
    if expected_status != "ok":
        return False, f"cannot read {res.name}: {expected}"
    same = canonical(lowercase_keys(value)) == canonical(expected)
    return same, value if same else f"got {value!r}\n    want {expected!r}"


def compare_libucl(libucl, path):
    """Whether bitelab and libucl read ``path`` alike (or both refuse it)."""
    from libucl import LibUCLError

    status, value = bitelab_read(path)
    try:
        expected = ("ok", libucl.load(path, variables=VARIABLES))
    except LibUCLError as e:
        expected = ("error", e.args[0])
    if status == "error" or expected[0] == "error":
        same = status == expected[0]
    else:
        same = canonical(value) == canonical(expected[1])
    return same, value if same else f"got {value!r}\n    want {expected[1]!r}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path, help="libucl's tests/basic directory")
    parser.add_argument("--libucl", help="path of a libucl shared library")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    corpus = args.corpus.resolve()
    files = sorted(corpus.glob("*.in"))
    if not files:
        parser.error(f"no *.in files in {corpus}")
    os.chdir(corpus)
    modes = [(".res files", compare_res)]
    if args.libucl:
        from libucl import LibUCL

        libucl = LibUCL(args.libucl)
        modes.append(("libucl", lambda path: compare_libucl(libucl, path)))
    for label, compare in modes:
        agree = []
        for path in files:
            same, detail = compare(path)
            if same:
                agree.append(path.name)
            elif args.verbose:
                print(f"  {label}: {path.name} differs: {detail}")
        print(f"against {label}: {len(agree)} of {len(files)} files agree")
        print(f"  differ: {sorted({p.name for p in files} - set(agree))}")


if __name__ == "__main__":
    main()
