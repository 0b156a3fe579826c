"""bitelab's UCL reader against libucl, one behaviour per test.

The cases live in ``ucl_cases.py``, each with the value libucl gives for its
text; ``bench/ucl_differential.py --cases`` re-checks them against libucl.
"""

import math

import pytest
from ucl_cases import DIFFERENCES, REFUSALS, VALUES, Refused

from bitelab.ucl import UCLError, load


def same(a, b):
    """Equal values of equal types (1, 1.0 and True differ; NaN is NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


def with_dir(value, directory):
    if isinstance(value, dict):
        return {k: with_dir(v, directory) for k, v in value.items()}
    if isinstance(value, list):
        return [with_dir(v, directory) for v in value]
    if isinstance(value, str):
        return value.replace("{dir}", directory)
    return value


def read(case, tmp_path):
    """Write the case's files and read its text as main.ucl."""
    for name, text in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    main = tmp_path / "main.ucl"
    main.write_text(case.text, encoding="utf-8")
    return main


def check(case, tmp_path):
    main = read(case, tmp_path)
    expected = case.bitelab
    if isinstance(expected, Refused):
        with pytest.raises(UCLError) as info:
            load(main, case.variables)
        error = info.value
        assert expected.fragment in error.reason
        if expected.line is not None:
            assert (error.line, error.column) == (expected.line, expected.column)
        assert "\n" not in str(error)
    else:
        value = load(main, case.variables)
        assert same(value, with_dir(expected, str(tmp_path.resolve())))


@pytest.mark.parametrize("case", VALUES, ids=lambda c: c.name)
def test_reads_as_libucl(case, tmp_path):
    """bitelab reads the text to the value libucl gives for it."""
    check(case, tmp_path)


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.name)
def test_refuses_as_libucl(case, tmp_path):
    """bitelab refuses what libucl refuses, with one line naming the file,
    the line and the column of the problem."""
    check(case, tmp_path)
    with pytest.raises(UCLError) as info:
        load(tmp_path / "main.ucl", case.variables)
    assert info.value.filename.startswith(str(tmp_path))


@pytest.mark.parametrize("case", DIFFERENCES, ids=lambda c: c.name)
def test_documented_difference(case, tmp_path):
    """Where libucl is plainly wrong (or needs what bitelab does not offer),
    bitelab gives its own documented result, not libucl's."""
    assert not same(case.bitelab, case.libucl)
    check(case, tmp_path)


def test_every_case_named_once():
    """Case names are unique, so each behaviour is one test."""
    names = [c.name for c in VALUES + REFUSALS + DIFFERENCES]
    assert len(names) == len(set(names))
