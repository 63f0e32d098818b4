"""Stop-string trimming: the stop sequence and everything after it never reach the client."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from pdpair.router.stop import StopTrimmer, trim_stop


def _reference(text: str, stops: list[str]) -> str:
    hits = [text.find(s) for s in stops if s and s in text]
    return text[: min(hits)] if hits else text


def test_one_shot_trim():
    assert trim_stop("The answer is 42. END of story", ["END"]) == "The answer is 42. "
    assert trim_stop("abc", ["x"]) == "abc"
    assert trim_stop("a STOP b END", ["END", "STOP"]) == "a "  # the earliest stop wins
    assert trim_stop("no stops", []) == "no stops"


def test_streaming_holds_back_a_possible_stop_prefix():
    t = StopTrimmer(["</s>"])
    assert t.push("hello <") == "hello "  # "<" could start "</s>"
    assert t.push("/") == ""
    assert t.push("x more") == "</x more"  # it did not: released
    assert t.push(" </") == " "
    assert t.push("s> tail") == ""
    assert t.stopped and t.push("anything") == "" and t.flush() == ""


def test_flush_releases_a_held_tail_that_was_not_a_stop():
    t = StopTrimmer(["END"])
    assert t.push("the EN") == "the "
    assert t.flush() == "EN"


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="abEND<>/ ", max_size=40),
    st.lists(st.text(alphabet="abEND<>/", min_size=1, max_size=4), min_size=1, max_size=3),
    st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
@example("><<", ["<", "><<"], [2])  # a longer stop beginning before a shorter one that completes first
def test_streaming_equals_one_shot_for_any_split(text, stops, cuts):
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    t = StopTrimmer(stops)
    out = "".join(t.push(text[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)) + t.flush()
    assert out == _reference(text, stops)
    assert not any(s in out for s in stops)
