"""Whose request it is by address: the client's address, seen through the reverse proxies the server trusts.

Behind a reverse proxy (the compose stack's HAProxy, an ingress) every request comes from the proxy's address. A proxy
says whom it forwards for in ``X-Forwarded-For`` (an HTTP header; over gRPC the same key as metadata): a
comma-separated list to which each proxy appends the address it received the request from. Anyone can write that
list, so it is believed only as far as a chain of trusted proxies vouches for it (``--trusted-proxies CIDR,…``;
none by default, and then it is never read): starting from the connection's peer, while the address is a trusted
proxy, step one entry to the left; the first address that is not trusted is the client's (nginx's
``real_ip_recursive on``). An entry that is not an address stops the walk at the proxy that wrote it, and a list of
trusted addresses only gives its left-most one.

Addresses are written as :mod:`ipaddress` writes them, an IPv4 client reached over IPv6 (``::ffff:10.0.0.7``) as
its IPv4 address, so that one client has one spelling whichever way it came in.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

FORWARDED_FOR = "x-forwarded-for"  # gRPC metadata keys are lower case; HTTP header names are matched in any case

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """``10.0.0.0/8``, ``192.168.1.7`` (one host), ``fd00::/8`` → networks; ``ValueError`` naming the first that is
    not one (host bits set, as in ``10.0.0.1/8``, are refused: they usually mean a typo)."""
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec.strip()))
        except ValueError as e:
            raise ValueError(f"--trusted-proxies: {spec.strip()!r} is not an address or CIDR network ({e})") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as peers and proxies write it (``[::1]``, an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def normal(host: str) -> str:
    """``host`` in the one spelling addresses have here; a peer that is not an IP address (a Unix socket) as it is."""
    address = parse_address(host)
    return host if address is None else str(address)


class Peers:
    """The client's address from a connection's peer and its ``X-Forwarded-For``, trusting ``trusted`` proxies."""

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self.trusted = parse_networks(trusted)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def client(self, peer: str, forwarded: str | None = None) -> str:
        """The client's address: ``peer`` (the connection's far end, without its port), or, when ``peer`` is a
        trusted proxy, the right-most address of ``forwarded`` that is not one."""
        if not self.trusted or not forwarded:
            return normal(peer)
        current = parse_address(peer)
        if current is None or not self.trusts(current):
            return normal(peer)
        for entry in reversed(forwarded.split(",")):
            hop = parse_address(entry)
            if hop is None:  # the trusted proxy at `current` passed on something that is not an address
                return str(current)
            current = hop
            if not self.trusts(current):
                return str(current)
        return str(current)  # every hop is trusted: the left-most one is as far as the list goes
