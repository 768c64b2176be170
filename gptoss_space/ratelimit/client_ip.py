"""The real client address behind trusted proxies, read from X-Forwarded-For right to left, within a bound."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from functools import lru_cache

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"
# A trusted_proxies entry that trusts a peer without an address (a UNIX socket: only local
# processes, i.e. the reverse proxy, can connect). Not in the defaults.
UNIX_SOCKET = "unix"
# The longest text one X-Forwarded-For entry can take: an address, brackets, a port, quotes, spaces.
MAX_ENTRY_CHARS = 64


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


def parse_ip(value: str | None) -> IPAddress | None:
    """One address as proxies write it, or None when it is not one.

    Accepts "1.2.3.4", "1.2.3.4:5678", "2001:db8::1", "[2001:db8::1]" and "[2001:db8::1]:5678";
    an IPv4-mapped IPv6 address ("::ffff:1.2.3.4") becomes the IPv4 address, so one client
    has one identity whichever socket family it arrived on.
    """
    if not value:
        return None
    text = value.strip().strip('"')
    if len(text) > 64:  # no address is this long; do not feed ipaddress megabytes
        return None
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if end == -1 or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has two colons or more
        text, port = text.split(":")
        if not _is_port(port):
            return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class TrustedProxies:
    """The proxies whose X-Forwarded-For entries we believe: addresses and CIDRs, parsed once."""

    def __init__(self, entries: Iterable[str] = (), *, max_hops: int = 8, ipv6_prefix: int = 128) -> None:
        # Only the last max_hops entries are read: a 10 MB header walked entry by entry held the event loop 6.5 s.
        self.max_hops = max_hops
        # An IPv6 host usually holds a whole /64: one client per network of this prefix, not per address.
        self.ipv6_prefix = ipv6_prefix
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.trust_unix = False
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry.lower() == UNIX_SOCKET:
                self.trust_unix = True
                continue
            try:
                # strict=False: "10.1.2.3/8" means 10.0.0.0/8, as an operator would expect.
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: not an address or CIDR: {entry!r}") from None
            if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
                mapped = net.network_address.ipv4_mapped
                if mapped is not None:  # ::ffff:10.0.0.0/104 is the IPv4 network 10.0.0.0/8
                    net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
            self.networks.append(net)
        self._v4 = tuple(n for n in self.networks if n.version == 4)
        self._v6 = tuple(n for n in self.networks if n.version == 6)
        # Few distinct proxies talk to us; cache their answers.
        self._contains_addr = lru_cache(maxsize=1024)(self._lookup)

    @classmethod
    def from_settings(cls, settings) -> TrustedProxies:
        return cls(settings.proxies(), max_hops=settings.forwarded_max_hops, ipv6_prefix=settings.client_ipv6_prefix)

    def _lookup(self, addr: IPAddress) -> bool:
        nets = self._v4 if addr.version == 4 else self._v6
        return any(addr in net for net in nets)

    def contains_addr(self, addr: IPAddress) -> bool:
        return self._contains_addr(addr)

    def contains(self, ip: str) -> bool:
        """True when `ip` (any form parse_ip accepts) is a trusted proxy; False for garbage."""
        addr = parse_ip(ip)
        return addr is not None and self._contains_addr(addr)

    def __contains__(self, ip: str) -> bool:
        return self.contains(ip)

    def __repr__(self) -> str:
        extra = ", unix" if self.trust_unix else ""
        return f"TrustedProxies([{', '.join(map(str, self.networks))}{extra}])"


def forwarded_for(headers) -> str | None:
    """Every X-Forwarded-For header of a request, joined with ",".

    Use this, not headers.get(): a proxy may add its own header line after the client's, and
    .get() returns the first line, which the client wrote. Takes Starlette's Headers (or any
    object with getlist) or a plain mapping.
    """
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        values = getlist("x-forwarded-for")
    else:
        values = [v for k, v in headers.items() if k.lower() == "x-forwarded-for"]
    return ",".join(values) or None


def last_entries(header: str, hops: int) -> list[str]:
    """The last `hops` comma-separated entries of `header`, right-most first, reading at most their bytes.

    An entry cut by the byte bound is dropped: it cannot be an address anyway, and the walk stops there.
    """
    window = hops * (MAX_ENTRY_CHARS + 1)
    tail = header[-window:]
    entries = tail.rsplit(",", hops)
    if len(header) > window and len(entries) == hops + 1:
        entries[0] = "\x00"  # the cut entry: not an address
    entries.reverse()
    return entries[:hops]


def client_ip(peer: str | None, forwarded_for: str | None, trusted: TrustedProxies) -> str:
    """The client's identity: the right-most address not belonging to a trusted proxy.

    `peer` is the socket peer (request.client.host); `forwarded_for` is every X-Forwarded-For
    header of the request joined with ",". Each proxy appends the address it saw, so only
    entries appended by trusted hops are believed: the walk goes from the right, skipping
    trusted proxies, and stops at the first untrusted address. An entry that is not an
    address (garbage, "unknown", an obfuscated name) also stops the walk, and the hop to its
    right, which is the one that wrote it, is taken as the client. When every hop is
    trusted the left-most one is the client (an internal caller). Only the last
    `trusted.max_hops` entries are read: past them the walk stops as at a non-address.

    The result is a canonical address string ("2001:db8::1", IPv4-mapped IPv6 as IPv4). A
    peer that is not an address (e.g. "testclient") is returned as given; no peer at all is
    "unknown" unless "unix" is in trusted_proxies.
    """
    if peer is None or peer == "":
        if not trusted.trust_unix:
            return UNKNOWN
        current: IPAddress | None = None
    else:
        current = parse_ip(peer)
        if current is None:
            return peer.strip()[:64] or UNKNOWN
        if not trusted.contains_addr(current):
            return str(current)
    if forwarded_for:
        for entry in last_entries(forwarded_for, trusted.max_hops):
            addr = parse_ip(entry)
            if addr is None:
                if entry.strip():
                    log.debug("X-Forwarded-For entry is not an address; stopping at the hop to its right")
                break
            current = addr
            if not trusted.contains_addr(addr):
                break
    return str(current) if current is not None else UNKNOWN


def identity(address: str, ipv6_prefix: int) -> str:
    """The rate-limit key of a client address: an IPv6 address stands for its /ipv6_prefix network."""
    if ipv6_prefix >= 128 or ":" not in address:
        return address
    try:
        return str(ipaddress.ip_network(f"{address}/{ipv6_prefix}", strict=False))
    except ValueError:
        return address


def client_of(request, trusted: TrustedProxies) -> str:
    """The identity of a Starlette request or a gr.Request (both have .client and .headers)."""
    peer = request.client.host if getattr(request, "client", None) else None
    return identity(client_ip(peer, forwarded_for(request.headers), trusted), trusted.ipv6_prefix)
