"""The reader of server-sent event streams (``bitelab.client.stream``)."""

from hypothesis import given
from hypothesis import strategies as st

from bitelab.client.stream import EventReader, ServerEvent


def read_all(*chunks):
    """Every event ``chunks`` (bytes) complete, fed one after the other."""
    reader = EventReader()
    events = []
    for chunk in chunks:
        events.extend(reader.feed(chunk))
    return events


def test_events_with_kind_data_and_comments():
    """``event`` names the kind, ``data`` carries the text, comments are skipped
    and an event without ``event`` is a ``message``."""
    stream = (
        b": keep-alive\n\n"
        b'event: position\ndata: {"waiter": 7, "position": 2}\n\n'
        b": keep-alive\n"
        b"data: plain\n\n"
    )
    events = read_all(stream)
    assert events == [
        ServerEvent("position", '{"waiter": 7, "position": 2}'),
        ServerEvent("message", "plain"),
    ]
    assert events[0].document() == {"waiter": 7, "position": 2}
    assert events[1].document() is None


def test_nothing_before_the_blank_line():
    """An event is handed on only once its blank line has come."""
    reader = EventReader()
    assert reader.feed(b"event: queued\ndata: {}\n") == []
    assert reader.feed(b"\n") == [ServerEvent("queued", "{}")]


def test_line_endings_and_split_crlf():
    """CRLF, CR and LF all end lines, a CRLF split between two pieces counts
    once, and a form feed inside data does not end a line."""
    events = read_all(
        b"event: a\r\ndata: x\x0cy\r", b"\n\r\n", b"data: 2\r\rdata: 3\n\n"
    )
    assert events == [
        ServerEvent("a", "x\x0cy"),
        ServerEvent("message", "2"),
        ServerEvent("message", "3"),
    ]


def test_multiline_data_fields_id_and_odd_lines():
    """Several data lines join with newlines; one leading space is dropped;
    a field without a colon has an empty value; unknown fields are ignored;
    an event without data is not dispatched; the last id stays."""
    stream = (
        b"data:first\ndata:  second\ndata\nid: 41\nretry: 10\nfoo: bar\n\n"
        b"event: empty\n\n"
        b"data: again\n\n"
    )
    assert read_all(stream) == [
        ServerEvent("message", "first\n second\n", "41"),
        ServerEvent("message", "again", "41"),
    ]


def test_byte_order_mark_and_utf8_split_across_pieces():
    """A BOM at the start is dropped; a character split between pieces is whole."""
    encoded = "\ufeffevent: freed\ndata: café\n\n".encode()
    cut = encoded.index(b"\xa9")  # the second byte of é
    assert read_all(encoded[:cut], encoded[cut:]) == [ServerEvent("freed", "café")]


def test_incomplete_event_at_the_end_is_not_dispatched():
    """An event cut off by the end of the stream is never handed on."""
    assert read_all(b"event: granted\ndata: {}") == []


_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    max_size=20,
)
_kind = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n:"),
    min_size=1,
    max_size=10,
).filter(lambda k: not k.startswith(" ") and not k.startswith("\ufeff"))


@given(
    events=st.lists(st.tuples(_kind, st.lists(_text, min_size=1, max_size=3))),
    newline=st.sampled_from(["\n", "\r", "\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000)),
    comments=st.booleans(),
)
def test_any_stream_cut_anywhere_reads_the_same(events, newline, cuts, comments):
    """Whatever the events, line endings and places the network cuts the bytes,
    the reader returns exactly the events that were written."""
    text = ""
    for kind, lines in events:
        if comments:
            text += ": keep-alive" + newline
        text += f"event: {kind}{newline}"
        text += "".join(f"data: {line}{newline}" for line in lines)
        text += newline
    raw = text.encode()
    points = sorted({cut % (len(raw) + 1) for cut in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    expected = [ServerEvent(kind, "\n".join(lines)) for kind, lines in events]
    assert read_all(*pieces) == expected
