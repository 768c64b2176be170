"""The gate every generating route passes: the client's identity, the shutdown check, then its turn (a Ticket)."""

from __future__ import annotations

from fastapi import Request

from gptoss_space.http.io import Shutdown, shutting_down, until_disconnect
from gptoss_space.ratelimit.client_ip import TrustedProxies, client_of
from gptoss_space.ratelimit.gate import Ticket
from gptoss_space.service import ChatService


async def admit(request: Request, service: ChatService, trusted: TrustedProxies, shutdown: Shutdown) -> Ticket:
    """This request's turn, or RateLimited / Overloaded / ModelLoading / ShuttingDown; ClientGone if it leaves waiting."""
    client = client_of(request, trusted)
    request.state.client_id = client
    if shutdown.begun is not None and shutdown.begun.done():
        raise shutting_down()
    # Most requests may start at once: no task to race against the client leaving.
    ticket = service.admit_now(client) or await until_disconnect(request, service.admit(client), stop=shutdown.begun)
    request.state.rate_headers = ticket.headers
    return ticket
