"""make_backend(settings), with lazy imports: proxy mode never imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptoss_space.backends.base import Backend
    from gptoss_space.settings import Settings


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "proxy":
        from gptoss_space.backends.proxy.backend import ProxyBackend

        return ProxyBackend(settings)
    from gptoss_space.backends.local.backend import LocalBackend

    return LocalBackend(settings)
