"""Client identity behind proxies: X-Forwarded-For walked from the right, trusted hops skipped."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from gptoss_space.ratelimit.client_ip import TrustedProxies, client_ip, client_of, forwarded_for, identity, parse_ip
from gptoss_space.settings import Settings

# A deployment behind a LAN proxy that names loopback and every private range (what the default was).
LAN = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]


@pytest.fixture
def trusted() -> TrustedProxies:
    return TrustedProxies(LAN)


def test_by_default_nobody_is_trusted(monkeypatch):
    for var in ("SPACE_ID", "GPTOSS_SPACE_ID", "GPTOSS_TRUSTED_PROXIES"):
        monkeypatch.delenv(var, raising=False)
    t = TrustedProxies.from_settings(Settings())
    # A local process or a neighbour on the LAN chose its identity with X-Forwarded-For before.
    assert client_ip("127.0.0.2", "203.0.113.9", t) == "127.0.0.2"
    assert client_ip("10.1.2.3", "203.0.113.9", t) == "10.1.2.3"
    assert t.networks == []


def test_on_a_space_the_front_proxy_network_is_trusted(monkeypatch):
    monkeypatch.delenv("GPTOSS_TRUSTED_PROXIES", raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/gptoss")
    t = TrustedProxies.from_settings(Settings())
    assert client_ip("10.16.3.80", "198.51.100.7", t) == "198.51.100.7"
    assert client_ip("127.0.0.1", "198.51.100.7", t) == "127.0.0.1"
    # What the operator names wins over the Space's default, an empty list included.
    monkeypatch.setenv("GPTOSS_TRUSTED_PROXIES", "[]")
    assert client_ip("10.16.3.80", "198.51.100.7", TrustedProxies.from_settings(Settings())) == "10.16.3.80"


def test_the_walk_reads_at_most_max_hops_entries():
    t = TrustedProxies(["10.0.0.0/8"], max_hops=3)
    assert client_ip("10.0.0.1", "198.51.100.7, 10.0.0.4, 10.0.0.3", t) == "198.51.100.7"
    # Four trusted hops: the walk stops after three, at a trusted address, never at the client's claim.
    assert client_ip("10.0.0.1", "198.51.100.7, 10.0.0.5, 10.0.0.4, 10.0.0.3", t) == "10.0.0.5"


def test_a_10_mb_header_is_read_in_bounded_time(trusted):
    huge = "1.2.3.4, " * 1_200_000 + "198.51.100.7"
    assert len(huge) > 10_000_000
    started = time.perf_counter()
    for _ in range(100):
        assert client_ip("10.0.0.1", huge, trusted) == "198.51.100.7"
        assert client_ip("10.0.0.1", "x" * 10_000_000, trusted) == "10.0.0.1"
    assert time.perf_counter() - started < 0.5  # was 6.5 s for one such request


def test_ipv6_clients_are_counted_per_prefix():
    assert identity("2001:db8:1:2:aaaa::1", 64) == "2001:db8:1:2::/64"
    assert identity("2001:db8:1:2:bbbb::9", 64) == "2001:db8:1:2::/64"
    assert identity("2001:db8:1:3::1", 64) != identity("2001:db8:1:2::1", 64)
    assert identity("2001:db8::1", 128) == "2001:db8::1"
    assert identity("198.51.100.7", 64) == "198.51.100.7"
    assert identity("testclient", 64) == "testclient"

    class Req:
        client = type("C", (), {"host": "2001:db8:1:2:cccc::5"})()
        headers = Headers(raw=[])

    assert client_of(Req(), TrustedProxies.from_settings(Settings())) == "2001:db8:1:2::/64"


def test_lan_list_trusts_loopback_and_private_ranges(trusted):
    for ip in ["127.0.0.1", "127.9.9.9", "::1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "fd00::5"]:
        assert trusted.contains(ip), ip
    for ip in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "fe80::1", "::2", "", "garbage", "10.0.0.256"]:
        assert not trusted.contains(ip), ip


def test_ipv4_mapped_ipv6_is_the_ipv4_address(trusted):
    assert trusted.contains("::ffff:10.0.0.1")
    assert not trusted.contains("::ffff:8.8.8.8")
    assert client_ip("::ffff:8.8.8.8", None, trusted) == "8.8.8.8"
    assert TrustedProxies(["::ffff:10.0.0.0/104"]).contains("10.9.9.9")


def test_single_addresses_and_cidrs_both_families():
    t = TrustedProxies(["203.0.113.7", "2001:db8:1::/48", " 198.51.100.0/24 ", ""])
    assert t.contains("203.0.113.7") and not t.contains("203.0.113.8")
    assert t.contains("2001:db8:1:ffff::1") and not t.contains("2001:db8:2::1")
    assert t.contains("198.51.100.200")
    assert "203.0.113.7" in t


def test_bad_setting_entry_fails_loudly():
    with pytest.raises(ValueError, match="trusted_proxies"):
        TrustedProxies(["10.0.0.0/8", "not-a-network"])


def test_direct_client_without_proxy(trusted):
    assert client_ip("8.8.8.8", None, trusted) == "8.8.8.8"
    assert client_ip("8.8.8.8", "", trusted) == "8.8.8.8"


def test_spoofed_header_from_untrusted_peer_is_ignored(trusted):
    # The peer is on the internet: whatever it writes in X-Forwarded-For is its own claim.
    assert client_ip("8.8.8.8", "1.2.3.4", trusted) == "8.8.8.8"
    assert client_ip("8.8.8.8", "10.0.0.1, 127.0.0.1", trusted) == "8.8.8.8"
    assert client_ip("2001:db8::9", "1.2.3.4", trusted) == "2001:db8::9"


def test_trusted_proxy_gives_the_forwarded_client(trusted):
    assert client_ip("10.0.0.2", "8.8.8.8", trusted) == "8.8.8.8"
    assert client_ip("127.0.0.1", " 8.8.8.8 ", trusted) == "8.8.8.8"


def test_client_cannot_pick_its_identity_through_a_trusted_proxy(trusted):
    # The client sends "X-Forwarded-For: 1.2.3.4"; the proxy appends the address it saw.
    assert client_ip("10.0.0.2", "1.2.3.4, 8.8.8.8", trusted) == "8.8.8.8"
    # Even claiming to be a trusted proxy itself changes nothing.
    assert client_ip("10.0.0.2", "1.2.3.4, 10.9.9.9, 8.8.8.8", trusted) == "8.8.8.8"


def test_chain_of_trusted_proxies_resolves_to_rightmost_untrusted(trusted):
    # client 8.8.8.8 -> CDN edge 10.1.1.1 -> balancer 192.168.0.5 -> app (peer 127.0.0.1)
    assert client_ip("127.0.0.1", "6.6.6.6, 8.8.8.8, 10.1.1.1, 192.168.0.5", trusted) == "8.8.8.8"


def test_all_hops_trusted_gives_leftmost(trusted):
    assert client_ip("127.0.0.1", "10.0.0.7, 192.168.0.5", trusted) == "10.0.0.7"
    assert client_ip("127.0.0.1", None, trusted) == "127.0.0.1"


def test_multiple_headers_joined_with_commas(trusted):
    headers = ["1.2.3.4", "8.8.8.8, 10.0.0.1"]
    assert client_ip("10.0.0.2", ",".join(headers), trusted) == "8.8.8.8"


def test_every_header_line_is_read(trusted):
    # The client sent its own line; the proxy added a second one instead of appending.
    headers = Headers(raw=[(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-for", b"8.8.8.8")])
    assert headers.get("x-forwarded-for") == "1.2.3.4"  # the trap
    assert forwarded_for(headers) == "1.2.3.4,8.8.8.8"
    assert client_ip("10.0.0.2", forwarded_for(headers), trusted) == "8.8.8.8"
    assert forwarded_for({"X-Forwarded-For": "8.8.8.8"}) == "8.8.8.8"
    assert forwarded_for(Headers(raw=[])) is None and forwarded_for({}) is None


def test_ipv6_chain(trusted):
    assert client_ip("::1", "2001:db8::1, fd12::3", trusted) == "2001:db8::1"
    assert client_ip("fd00::1", "[2001:db8::7]:4711", trusted) == "2001:db8::7"
    # One canonical spelling per address.
    assert client_ip("::1", "2001:DB8:0:0:0:0:0:1", trusted) == "2001:db8::1"


def test_entries_with_ports_and_quotes(trusted):
    assert client_ip("10.0.0.2", "8.8.8.8:51234", trusted) == "8.8.8.8"
    assert client_ip("10.0.0.2", '"8.8.4.4"', trusted) == "8.8.4.4"


@pytest.mark.parametrize(
    "xff, expected",
    [
        ("garbage", "10.0.0.2"),  # the peer wrote garbage: the peer is the client
        ("8.8.8.8, unknown", "10.0.0.2"),
        ("8.8.8.8, unknown, 10.0.0.9", "10.0.0.9"),  # the hop right of the garbage is the client
        ("8.8.8.8, , 10.0.0.9", "10.0.0.9"),  # an empty entry is garbage too
        ("1.1.1.1, not-an-ip, 9.9.9.9, 10.0.0.9", "9.9.9.9"),  # untrusted reached first
        ("999.1.1.1", "10.0.0.2"),
        ("[2001:db8::1", "10.0.0.2"),
        ("8.8.8.8:port", "10.0.0.2"),
        ("8.8.8.8:\u00b2", "10.0.0.2"),
        ("x" * 10_000, "10.0.0.2"),
    ],
)
def test_garbage_stops_the_walk(trusted, xff, expected):
    assert client_ip("10.0.0.2", xff, trusted) == expected


def test_peer_not_an_address(trusted):
    # Starlette's TestClient reports "testclient"; it is its own identity, headers ignored.
    assert client_ip("testclient", "8.8.8.8", trusted) == "testclient"


def test_no_peer_is_unknown_unless_unix_socket_trusted():
    default = TrustedProxies(LAN)
    assert client_ip(None, "8.8.8.8", default) == "unknown"
    unix = TrustedProxies([*LAN, "unix"])
    assert client_ip(None, "1.2.3.4, 8.8.8.8", unix) == "8.8.8.8"
    assert client_ip(None, None, unix) == "unknown"
    assert client_ip(None, "garbage", unix) == "unknown"


def test_empty_trust_list_trusts_nobody():
    assert client_ip("127.0.0.1", "8.8.8.8", TrustedProxies([])) == "127.0.0.1"


def test_parse_ip_forms():
    assert str(parse_ip("1.2.3.4")) == "1.2.3.4"
    assert str(parse_ip("[::1]:80")) == "::1"
    assert str(parse_ip("[::1]")) == "::1"
    assert parse_ip("[::1]x") is None
    assert parse_ip("1.2.3.4:") is None
    assert parse_ip(None) is None
    assert parse_ip("   ") is None


def test_trusted_from_env(monkeypatch):
    monkeypatch.setenv("GPTOSS_TRUSTED_PROXIES", '["100.64.0.0/10"]')
    t = TrustedProxies.from_settings(Settings())
    assert t.contains("100.64.1.1") and not t.contains("10.0.0.1")


_TRUSTED = TrustedProxies(LAN)
_public = st.ip_addresses().filter(lambda a: not _TRUSTED.contains(str(a)))
_proxy = st.sampled_from(["10.0.0.1", "10.200.3.4", "192.168.7.7", "172.20.0.9", "127.0.0.1", "::1", "fd00::42"])
_junk = st.text(alphabet=st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), max_size=24)


@settings(max_examples=200, deadline=None)
@given(prefix=st.lists(st.one_of(st.ip_addresses().map(str), _proxy, _junk), max_size=6), client=_public, proxies=st.lists(_proxy, min_size=1, max_size=4))
def test_whatever_the_client_writes_its_identity_is_the_address_the_first_proxy_saw(prefix, client, proxies):
    # client -> proxies[0] -> ... -> proxies[-1] -> app; each proxy appends the address it saw.
    xff = ", ".join([*prefix, str(client), *proxies[:-1]])
    assert client_ip(proxies[-1], xff, _TRUSTED) == str(parse_ip(str(client)))


def test_client_of_reads_a_request_the_api_and_the_page_share():
    class Req:  # what Starlette requests and gr.Request both offer
        client = type("C", (), {"host": "127.0.0.1"})()
        headers = Headers(raw=[(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.7")])

    trusted = TrustedProxies(["127.0.0.0/8"])
    assert client_of(Req(), trusted) == "198.51.100.7"  # the line the trusted proxy added wins
    Req.client = None
    assert client_of(Req(), trusted) == "unknown"
