"""RecordParser: the vectorised CSV path accepts exactly what Python's float() accepts, line by line."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.contract.records import RecordParser, RecordSchema

SCHEMA = RecordSchema(format="csv", timestamp_field="ts", channels={"A": "a", "B": "b"})
HEADER = "ts,A,B,EXTRA"


def parser() -> RecordParser:
    p = RecordParser(SCHEMA)
    p.set_header(HEADER)
    return p


number_text = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda v: f"{v:.3e}"),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda v: f" {v:.4f} "),
    st.sampled_from(["1_000", ".5", "5.", "+1", "-0", "1E3"]),
)
row = st.tuples(st.integers(0, 10**9), number_text, number_text, number_text)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(row, min_size=1, max_size=60), crlf=st.booleans())
def test_clean_blocks_parse_to_what_float_reads_from_each_field(
    rows: list[tuple[int, str, str, str]], crlf: bool
) -> None:
    """Blocks of well-formed lines (any float syntax, blanks, CRLF) give float() of each field, in order."""
    ending = "\r\n" if crlf else "\n"
    rows = [(i * 10 + ts % 10, a, b, extra) for i, (ts, a, b, extra) in enumerate(rows)]  # time goes on
    lines = [f"{ts},{a},{b},{extra}{ending}" for ts, a, b, extra in rows]
    data = "".join(lines).encode()
    result = parser().parse(data, base_offset=100)
    assert result.rejected == []
    expected = np.array([[float(a), float(b)] for _, a, b, _ in rows])
    assert np.array_equal(result.batch.values, expected)
    assert result.batch.timestamps.tolist() == [float(ts) for ts, *_ in rows]
    starts = [100 + sum(len(x) for x in lines[:i]) for i in range(len(lines))]
    assert result.batch.starts.tolist() == starts


def test_one_bad_line_rejects_only_itself() -> None:
    """A block with a bad line still yields every good record, and the bad one with its offset."""
    data = b"1,1,1,x\n2,oops,2,x\n3,3,3,x\n4,4\n5,5,5,x\n"
    result = parser().parse(data)
    assert result.batch.timestamps.tolist() == [1.0, 3.0, 5.0]
    assert [(r.offset, r.reason) for r in result.rejected] == [(8, "not_numeric"), (27, "field_count")]


def test_nul_bytes_never_slip_through_the_fast_path() -> None:
    """A NUL inside or at the end of a number is refused as binary, not read as the digits before it."""
    result = parser().parse(b"1,4\x00,1,x\n2,2,2\x00,x\n3,3,3,x\n")
    assert result.batch.timestamps.tolist() == [3.0]
    assert [r.reason for r in result.rejected] == ["binary", "binary"]


def test_lines_float_accepts_but_numpy_would_not_are_still_records() -> None:
    """Underscored digits (valid for float()) fall back to the line path and are kept."""
    result = parser().parse(b"1,1_000,2,x\n2,3,4,x\n")
    assert result.batch.values.tolist() == [[1000.0, 2.0], [3.0, 4.0]]


def test_blank_lines_and_comment_like_lines_are_refused_not_skipped() -> None:
    """Numpy would skip a blank line or a '#' line; the parser refuses each with a reason."""
    result = parser().parse(b"1,1,1,x\n\n#2,2,2,x\n3,3,3,x\n")
    assert result.batch.timestamps.tolist() == [1.0, 3.0]
    assert [r.reason for r in result.rejected] == ["empty", "bad_timestamp"]


def test_non_finite_values_are_refused_in_a_clean_block() -> None:
    """Nan and inf parse in the fast path and are then refused as not_finite."""
    result = parser().parse(b"1,nan,1,x\n2,2,inf,x\n3,3,3,x\n")
    assert result.batch.timestamps.tolist() == [3.0]
    assert [r.reason for r in result.rejected] == ["not_finite", "not_finite"]
    assert not any(math.isnan(v) for v in result.batch.values.ravel())
