"""Transcript exports: txt by case table; srt, vtt, json and csv read back by their parsers."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass
from datetime import timedelta

import pytest
import srt
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st

from botasync.transcripts import (
    FORMATS,
    Segment,
    Transcript,
    export,
    time_label,
    to_csv,
    to_json,
    to_srt,
    to_txt,
    to_vtt,
)

FULL = "Hello there. General Kenobi."


def transcript(*segments: Segment, full_text: str = FULL) -> Transcript:
    return Transcript("rec_1", "txn_1", "en", full_text, tuple(segments))


def seg(position: int, start: float | None, end: float | None, speaker: str | None, text: str,
        confidence: float | None = None) -> Segment:
    return Segment(position, start, end, speaker, text, confidence)


def norm(text: str) -> str:
    """Whitespace runs as one space, ends trimmed."""
    return " ".join(text.split())


def ms(seconds: float) -> int:
    """The documented rounding: the nearest millisecond, halves up."""
    return math.floor(seconds * 1000 + 0.5)


def srt_cues(text: str) -> list[tuple[int, int, str]]:
    """(start ms, end ms, text as a player shows it) of each cue, parsed by the `srt` package."""
    one = timedelta(milliseconds=1)
    return [(s.start // one, s.end // one, html.unescape(s.content))
            for s in srt.parse(text, ignore_errors=False)]


def vtt_cues(text: str) -> list[tuple[int, int, str | None, str]]:
    """(start ms, end ms, voice, text) of each cue, parsed by `webvtt-py`, entities decoded."""
    return [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds(),
             norm(html.unescape(c.voice)) if c.voice else None, html.unescape(c.text))
            for c in webvtt.from_string(text).captions]


# --- txt -------------------------------------------------------------------------------

SPEAKERS = transcript(
    seg(0, 0.0, 2.5, "Alice", "Hello\nthere."),
    seg(1, 62.9, 64.0, "Bob", "General   Kenobi."),
    seg(2, None, None, None, "untimed, unattributed"),
    seg(3, 65.0, 66.0, None, "  \n "),  # blank: skipped
)


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (SPEAKERS, "[00:00] Alice: Hello there.\n[01:02] Bob: General Kenobi.\n"
                   "untimed, unattributed\n"),
        (transcript(), FULL + "\n"),  # no segments: the full text
        (transcript(seg(0, 1.0, 2.0, "A", " ")), FULL + "\n"),  # no segment has text
        (transcript(full_text="  "), ""),
        (transcript(full_text="Line one.\n\nLine two.\n"), "Line one.\n\nLine two.\n"),
        (transcript(seg(0, 5.0, 6.0, "A", "early"), seg(1, 6000.0, 6001.0, "B", "late")),
         "[00:00:05] A: early\n[01:40:00] B: late\n"),  # one format for every line
        (transcript(seg(1, 2.0, 3.0, None, "second"), seg(0, 9.0, 10.0, None, "first")),
         "[00:09] first\n[00:02] second\n"),  # position order, not time order
        (transcript(seg(0, -3.0, 1.0, "A", "bad time"), seg(1, math.nan, None, "B", "nan")),
         "A: bad time\nB: nan\n"),
    ],
)
def test_txt(t: Transcript, expected: str) -> None:
    """Speaker-labelled lines with [mm:ss] times, or the full text when no segment has text."""
    assert to_txt(t) == expected


@pytest.mark.parametrize(
    ("seconds", "hours", "label"),
    [(0, False, "00:00"), (59.99, False, "00:59"), (3599.9, False, "59:59"),
     (3600, False, "01:00:00"), (6000, False, "01:40:00"), (360000, False, "100:00:00"),
     (5, True, "00:00:05"), (-1, False, "00:00"), (math.nan, False, "00:00")],
)
def test_time_label(seconds: float, hours: bool, label: str) -> None:
    """Whole seconds; minutes never pass 59, hours appear from the first hour on."""
    assert time_label(seconds, hours) == label


# --- srt and vtt, by example ---------------------------------------------------------------

TRICKY = transcript(
    seg(0, 0.0, 2.5, "Alice", "Hello --> there\n\nwith a blank line"),
    seg(1, 3.0, 4.0, "Bob <b>", "1\n00:00:09,000 --> 00:00:10,000\nInjected cue?"),
    seg(2, 4.0, 5.0, None, "<i>not italic</i> & &amp; stays"),
    seg(3, None, 7.0, "Carol", "no start: skipped"),
    seg(4, 8.0, None, "Carol", "no end: skipped"),
    seg(5, 9.0, 10.0, "Dan", ""),  # blank: skipped
    seg(6, 360000.5, 360001.25, "Eve", "past a hundred hours"),
    seg(8, 13.0, 14.0, "--", "a speaker named with dashes"),
    seg(7, 12.0, 11.0, None, "ends before it starts"),
)


def test_srt_parses_to_exactly_the_timed_cues() -> None:
    """`srt` reads one cue per timed segment; `-->`, blank lines and tags stay inside it."""
    out = to_srt(TRICKY)
    assert srt_cues(out) == [
        (0, 2500, "Alice: Hello --> there with a blank line"),
        (3000, 4000, "Bob <b>: 1 00:00:09,000 --> 00:00:10,000 Injected cue?"),
        (4000, 5000, "<i>not italic</i> & &amp; stays"),
        (12000, 12000, "ends before it starts"),
        (13000, 14000, "--: a speaker named with dashes"),
        (360000500, 360001250, "Eve: past a hundred hours"),
    ]
    assert "100:00:00,500 --> 100:00:01,250" in out
    assert [s.index for s in srt.parse(out)] == [1, 2, 3, 4, 5, 6]


def test_vtt_parses_to_exactly_the_timed_cues() -> None:
    """`webvtt-py` reads the same cues, speakers as voice spans, no `-->` inside a payload."""
    out = to_vtt(TRICKY)
    assert out.startswith("WEBVTT\n\n")
    assert vtt_cues(out) == [
        (0, 2500, "Alice", "Hello --> there with a blank line"),
        (3000, 4000, "Bob <b>", "1 00:00:09,000 --> 00:00:10,000 Injected cue?"),
        (4000, 5000, None, "<i>not italic</i> & &amp; stays"),
        (12000, 12000, None, "ends before it starts"),
        (13000, 14000, "--", "a speaker named with dashes"),
        (360000500, 360001250, "Eve", "past a hundred hours"),
    ]
    assert "100:00:00.500 --> 100:00:01.250" in out
    payloads = [ln for ln in out.splitlines()[1:] if ln and " --> " not in ln]
    assert all("-->" not in p for p in payloads)


@pytest.mark.parametrize(
    "t",
    [transcript(), transcript(seg(0, None, None, "A", "untimed")),
     transcript(seg(0, 1.0, 2.0, "A", " \n "))],
)
def test_without_timed_text_srt_and_vtt_have_no_cues(t: Transcript) -> None:
    """Untimed or blank segments are skipped, never given invented times."""
    assert to_srt(t) == ""
    assert srt_cues(to_srt(t)) == []
    assert to_vtt(t) == "WEBVTT\n"
    assert vtt_cues(to_vtt(t)) == []


def test_cues_come_in_start_order_ties_by_position() -> None:
    """Players want cues by start time; equal starts keep the transcript's order."""
    t = transcript(seg(2, 5.0, 6.0, None, "c"), seg(0, 5.0, 5.5, None, "a"),
                   seg(1, 1.0, 2.0, None, "b"))
    assert [c[2] for c in srt_cues(to_srt(t))] == ["b", "a", "c"]
    assert [c[3] for c in vtt_cues(to_vtt(t))] == ["b", "a", "c"]


@pytest.mark.parametrize(
    ("start", "end", "start_ms", "end_ms"),
    [(0.0005, 0.0015, 1, 2), (1.2344, 1.2346, 1234, 1235), (59.9999, 60.0, 60000, 60000),
     (3599.9996, 3600.0, 3600000, 3600000)],
)
def test_times_round_to_the_nearest_millisecond(
    start: float, end: float, start_ms: int, end_ms: int
) -> None:
    """Halves up, carried into seconds, minutes and hours."""
    t = transcript(seg(0, start, end, None, "x"))
    assert srt_cues(to_srt(t)) == [(start_ms, end_ms, "x")]
    assert vtt_cues(to_vtt(t)) == [(start_ms, end_ms, None, "x")]


# --- json and csv --------------------------------------------------------------------------


def test_json_keeps_everything_as_given() -> None:
    """Ids, language, full text, and every segment in position order with its raw text."""
    t = transcript(seg(1, 3.0, 2.0, None, "b\n\nraw", 0.5), seg(0, math.inf, -1.0, "A", " ", math.nan))
    assert json.loads(to_json(t)) == {
        "recording_id": "rec_1", "transcription_id": "txn_1", "language": "en",
        "full_text": FULL,
        "segments": [
            {"position": 0, "start_s": None, "end_s": None, "speaker": "A", "text": " ",
             "confidence": None},
            {"position": 1, "start_s": 3.0, "end_s": 2.0, "speaker": None, "text": "b\n\nraw",
             "confidence": 0.5},
        ],
    }


def test_csv_quotes_commas_quotes_and_newlines() -> None:
    """RFC 4180: the header, one record per segment, empty cells for missing values."""
    t = transcript(
        seg(0, 0.0, 1.5, "Smith, Jo", 'He said "no",\nthen left.', 0.98),
        seg(1, None, None, None, "untimed"),
        seg(2, 0.00001, 1e22, "Zoë", "", None),
    )
    out = to_csv(t)
    assert out.startswith("start_s,end_s,speaker,text,confidence\r\n")
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert rows == [
        ["start_s", "end_s", "speaker", "text", "confidence"],
        ["0.0", "1.5", "Smith, Jo", 'He said "no",\nthen left.', "0.98"],
        ["", "", "", "untimed", ""],
        ["0.00001", "10000000000000000000000", "Zoë", "", ""],
    ]


def test_csv_without_segments_is_the_header_only() -> None:
    """The csv is the segment table; the full text is in txt and json."""
    assert to_csv(transcript()) == "start_s,end_s,speaker,text,confidence\r\n"


def test_export_dispatches_every_format_and_refuses_others() -> None:
    """`export(t, fmt)` is the function of that name; an unknown format is one clear error."""
    for fmt, fn in zip(FORMATS, (to_txt, to_srt, to_vtt, to_json, to_csv), strict=True):
        assert export(TRICKY, fmt) == fn(TRICKY)
    with pytest.raises(ValueError, match=r"^unknown format 'pdf': one of txt, srt, vtt, json, csv$"):
        export(TRICKY, "pdf")  # type: ignore[arg-type]


# --- properties ----------------------------------------------------------------------------

NASTY = ["-->", "--", ">", "<", "&", "&amp;", "&lt;", "\n", "\n\n", "\r\n", "\r", " ", "\t",
         "1", "00:00:01,000 --> 00:00:02,000", "NOTE", "WEBVTT", "<v x>", "\u2028", "\x85",
         '"', ",", "\x00", "\ufeff"]
texts = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(NASTY)), max_size=8).map("".join)
times = st.floats(min_value=0, max_value=400_000, allow_nan=False, allow_infinity=False)


@st.composite
def segments(draw: st.DrawFn, timed: bool = True) -> tuple[Segment, ...]:
    """Segments with unique positions in any order; times present when `timed`."""
    n = draw(st.integers(min_value=0, max_value=12))
    positions = draw(st.permutations(range(n)))
    maybe = times if timed else st.one_of(st.none(), times, st.just(math.nan))
    return tuple(
        Segment(p, draw(maybe), draw(maybe), draw(st.one_of(st.none(), texts)), draw(texts),
                draw(st.one_of(st.none(), st.floats(0, 1))))
        for p in positions
    )


@dataclass(frozen=True)
class Cue:
    """What a cue should hold: times in the input's seconds and rounded, speaker and text."""

    start_s: float
    end_s: float
    speaker: str
    text: str

    @property
    def times_ms(self) -> tuple[int, int]:
        return ms(self.start_s), max(ms(self.end_s), ms(self.start_s))


def expected_cues(segs: tuple[Segment, ...]) -> list[Cue]:
    """The non-blank segments as cues, in start (to the millisecond) then position order."""
    timed = []
    for s in segs:
        assert s.start_s is not None and s.end_s is not None
        if norm(s.text):
            timed.append((ms(s.start_s), s.position,
                          Cue(s.start_s, s.end_s, norm(s.speaker or ""), norm(s.text))))
    return [c for _, _, c in sorted(timed, key=lambda x: (x[0], x[1]))]


def assert_times(got: list[tuple[int, int]], want: list[Cue]) -> None:
    """Each cue's times are the input's to the millisecond (within half of one)."""
    assert got == [c.times_ms for c in want]
    for (start_ms, end_ms), c in zip(got, want, strict=True):
        assert abs(start_ms - c.start_s * 1000) <= 0.5 + 1e-9 * c.start_s * 1000
        assert end_ms == start_ms or abs(end_ms - c.end_s * 1000) <= 0.5 + 1e-9 * c.end_s * 1000


@settings(max_examples=200, deadline=None)
@given(segs=segments())
def test_any_segments_round_trip_through_srt_and_vtt(segs: tuple[Segment, ...]) -> None:
    """Times to the millisecond, speakers and text (whitespace normalised) come back from
    the `srt` and `webvtt-py` parsers."""
    t = transcript(*segs)
    want = expected_cues(segs)
    got_srt = srt_cues(to_srt(t))
    assert_times([(g[0], g[1]) for g in got_srt], want)
    assert [norm(g[2]) for g in got_srt] == [f"{c.speaker}: {c.text}" if c.speaker else c.text
                                             for c in want]
    got_vtt = vtt_cues(to_vtt(t))
    assert_times([(g[0], g[1]) for g in got_vtt], want)
    assert [(g[2] or "", norm(g[3])) for g in got_vtt] == [(c.speaker, c.text) for c in want]


@settings(max_examples=100, deadline=None)
@given(segs=segments(timed=False))
def test_any_segments_round_trip_through_json_and_csv(segs: tuple[Segment, ...]) -> None:
    """The data formats give back every segment, text and finite time exactly."""
    t = transcript(*segs)
    ordered = sorted(segs, key=lambda s: s.position)

    def clean(x: float | None) -> float | None:
        return x if x is not None and math.isfinite(x) else None

    data = json.loads(to_json(t))
    assert [(d["position"], d["start_s"], d["end_s"], d["speaker"], d["text"], d["confidence"])
            for d in data["segments"]] == \
        [(s.position, clean(s.start_s), clean(s.end_s), s.speaker, s.text, clean(s.confidence))
         for s in ordered]
    rows = list(csv.reader(io.StringIO(to_csv(t), newline="")))
    assert rows[0] == ["start_s", "end_s", "speaker", "text", "confidence"]
    back = [(float(a) if a else None, float(b) if b else None, c, d, float(e) if e else None)
            for a, b, c, d, e in rows[1:]]
    assert back == [(clean(s.start_s), clean(s.end_s), s.speaker or "", s.text,
                     clean(s.confidence)) for s in ordered]


@settings(max_examples=100, deadline=None)
@given(segs=segments(timed=False))
def test_txt_has_one_line_per_segment_with_text(segs: tuple[Segment, ...]) -> None:
    """Whatever the text, each non-blank segment is one line ending with its normalised text."""
    t = transcript(*segs, full_text="the full text")
    lines = to_txt(t).split("\n")
    assert lines[-1] == ""
    spoken = [s for s in sorted(segs, key=lambda s: s.position) if norm(s.text)]
    if not spoken:
        assert lines[:-1] == ["the full text"]
        return
    assert len(lines[:-1]) == len(spoken)
    assert all(line.endswith(norm(s.text)) for line, s in zip(lines, spoken, strict=False))
