"""Stop sequences in streamed text: held back across pieces, cut exactly, and cheap whatever the stop is."""

from __future__ import annotations

import time

import pytest

from gptoss_space.backends.local.textstream import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    return out + m.flush(), m.stopped


@pytest.mark.parametrize("stops,pieces,expected", [
    (["END"], ["Hello E", "N", "D and more"], ("Hello ", True)),
    (["END"], ["Hello E", "N", "d"], ("Hello ENd", False)),  # a tail that never became the stop is released
    (["aab"], ["aaa", "ab"], ("aa", True)),  # the match restarts inside a failed partial match
    (["\n\n", "User:"], ["one\n", "two\n", "\nUser:"], ("one\ntwo", True)),
    (["abcd", "bc"], ["ab", "cd"], ("a", True)),  # the first stop to complete in the stream wins
    ([], ["any", "thing"], ("anything", False)),
])
def test_stop_sequences_cut_the_stream(stops, pieces, expected):
    assert run(stops, pieces) == expected


def test_nothing_past_a_stop_is_emitted_and_held_text_never_duplicates():
    m = StopMatcher(["xyz"])
    assert m.feed("ax") == "a"
    assert m.feed("y") == ""
    assert m.feed("q") == "xyq"
    assert m.feed("xyz tail") == ""
    assert m.stopped and m.feed("more") == "" and m.flush() == ""


def _cpu_per_token(stops: list[str]) -> float:
    m = StopMatcher(stops)
    t0 = time.process_time()
    for _ in range(2000):
        m.feed("aa")
    assert not m.stopped
    return (time.process_time() - t0) / 2000


def test_adversarial_stop_sequences_cost_about_what_a_short_one_costs():
    """Long self-similar stops (4 x 4,000 characters) against a stream of near-matches, a token at a time.

    The previous matcher rescanned the held tail for every stop, about 95 ms a token here, some
    thousand times a short stop's cost; now each character advances each stop once.
    """
    long = ["a" * 3999 + "b", "ab" * 2000, "a" * 3998 + "ba", ("aab" * 1334)[:4000]]
    short = ["ab", "b", "ba", "aab"]
    ratio = _cpu_per_token(long) / _cpu_per_token(short)
    assert ratio < 10, ratio
