"""The generation handle: whatever ends an answer, its ticket is released once and its generation cancelled."""

from __future__ import annotations

import pytest

from gptoss_space.protocol.request import validate_request
from gptoss_space.ratelimit.fifo import make_gate
from gptoss_space.ratelimit.gate import Ticket
from gptoss_space.service import ChatService
from tests.conftest import make_settings
from tests.support.fakes import ScriptedBackend

Q = {"messages": [{"role": "user", "content": "Hi"}]}


def service() -> tuple[ChatService, ScriptedBackend]:
    settings = make_settings()
    backend = ScriptedBackend()
    return ChatService(settings, backend, make_gate(settings)), backend


def counted_ticket() -> tuple[Ticket, list[int]]:
    releases: list[int] = []
    return Ticket("c", on_release=lambda: releases.append(1)), releases


async def test_reading_to_the_end_then_closing_releases_once():
    svc, _ = service()
    ticket, releases = counted_ticket()
    async with svc.start(svc.build(validate_request(Q, stream_default=False)), ticket) as generation:
        deltas = [d async for d in generation]
    assert deltas[-1].finish_reason == "stop"
    await generation.aclose()  # a second close does nothing
    assert releases == [1] and svc.usage.completed == 1


async def test_closing_mid_answer_cancels_the_generation_and_releases():
    svc, backend = service()
    backend.enqueue("one ", "two ", "three", delay=0.05)
    ticket, releases = counted_ticket()
    generation = svc.start(svc.build(validate_request(Q, stream_default=False)), ticket)
    await anext(generation)
    await generation.aclose()
    assert releases == [1] and svc.usage.cancelled == 1 and backend.cancelled == 1


async def test_an_error_inside_the_block_still_releases():
    svc, _ = service()
    ticket, releases = counted_ticket()
    with pytest.raises(RuntimeError):
        async with svc.start(svc.build(validate_request(Q, stream_default=False)), ticket) as generation:
            await anext(generation)
            raise RuntimeError("the caller failed")
    assert releases == [1]


async def test_the_page_session_admits_and_releases_through_the_gate():
    svc, _ = service()
    await svc.gate.start()
    try:
        async with svc.session(validate_request(Q, stream_default=False), "visitor") as generation:
            assert svc.gate.stats()["generations_running"] == 1
            [d async for d in generation]
        assert generation.ticket.released and svc.gate.stats()["generations_running"] == 0
    finally:
        await svc.gate.close()
