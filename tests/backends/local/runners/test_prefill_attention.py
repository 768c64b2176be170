"""Which prompts of one prefill share a prefix computed once (pure planning, no model)."""

from __future__ import annotations

from gptoss_space.backends.local.runners.prefill_attention import shared_prefixes

SYSTEM = list(range(100, 140))  # a 40-token system prompt
OTHER = list(range(500, 530))


def chat(system: list[int], user: int) -> list[int]:
    return [1, 2, 3] + system + [900 + user, 901, 902]


def test_a_burst_on_one_system_prompt_computes_it_in_one_row():
    ps = [chat(SYSTEM, i) for i in range(6)]
    assert shared_prefixes(ps, [0] * 6) == {j: (0, 43) for j in range(1, 6)}


def test_an_odd_prompt_does_not_shorten_the_others_shared_part():
    # The 4th prompt has its own system prompt (3 tokens in common): it is left alone, whatever the order.
    ps = [chat(OTHER, 0)] + [chat(SYSTEM, i) for i in range(1, 5)]
    shares = shared_prefixes(ps, [0] * 5)
    assert 0 not in shares and {t for _, t in shares.values()} == {43}
    leader = {lead for lead, _ in shares.values()}.pop()
    assert sorted([*shares, leader]) == [1, 2, 3, 4]


def test_two_system_prompts_make_two_groups():
    ps = [chat(SYSTEM, 0), chat(OTHER, 1), chat(SYSTEM, 2), chat(OTHER, 3)]
    shares = shared_prefixes(ps, [0] * 4)
    assert shares in ({2: (0, 43), 3: (1, 33)}, {0: (2, 43), 3: (1, 33)}, {2: (0, 43), 1: (3, 33)}, {0: (2, 43), 1: (3, 33)})


def test_what_the_prefix_store_holds_is_not_shared_again():
    ps = [chat(SYSTEM, i) for i in range(4)]
    assert shared_prefixes(ps, [43] * 4) == {}  # all of the system prompt is cached
    # Only the minute changed: the few tokens after it are still worth sharing among 8, not among 2.
    eight = [chat(SYSTEM, i) for i in range(8)]
    assert shared_prefixes(eight, [40] * 8) == {j: (0, 43) for j in range(1, 8)}
    assert shared_prefixes(eight[:2], [40] * 2) == {}


def test_a_prompt_never_copies_its_last_token():
    ps = [chat(SYSTEM, 0), chat(SYSTEM, 0)[:-1]]  # the second is a prefix of the first
    shares = shared_prefixes(ps, [0, 0])
    for j, (_lead, t) in shares.items():
        assert t <= len(ps[j]) - 1
