"""Association policy: which peers may open an association with us, and why one is refused."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from triage_node.config import PeerSection

# A-ASSOCIATE-RJ: result "rejected-permanent", source "service-user" (PS3.8 9.3.4).
REJECT_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
DIAG_CALLING_AE_NOT_RECOGNISED = 0x03
DIAG_CALLED_AE_NOT_RECOGNISED = 0x07


@dataclass(frozen=True)
class AssociationDecision:
    """Outcome of the policy for one A-ASSOCIATE-RQ."""

    accepted: bool
    reason: str
    diagnostic: int | None = None  # A-ASSOCIATE-RJ reason/diag when refused
    # A fixed word for the reason (metrics label): called_ae_not_ours,
    # calling_ae_unknown, host_not_allowed; "" when accepted.
    code: str = ""


def host_matches(pattern: str, host: str) -> bool:
    """True if the peer address ``host`` is covered by a ``[[peers]]`` host ``pattern``.

    ``pattern`` is ``*`` (anyone), ``localhost`` (any loopback address), an IP address or
    a network such as ``10.0.0.0/24``. IPv4-mapped IPv6 addresses count as IPv4.
    """
    if pattern == "*":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if pattern == "localhost":
        return addr.is_loopback
    network = ipaddress.ip_network(pattern, strict=False)
    return addr.version == network.version and addr in network


class AssociationPolicy:
    """Decides on association requests from the configured AE title and peer list."""

    def __init__(self, our_ae_title: str, peers: list[PeerSection]) -> None:
        self.our_ae_title = our_ae_title.strip()
        self.peers = list(peers)

    def decide(self, calling_ae: str, called_ae: str, peer_host: str) -> AssociationDecision:
        """Accept when the called AE is ours and a peer entry has this calling AE and host."""
        calling = calling_ae.strip()
        called = called_ae.strip()
        if called != self.our_ae_title:
            return AssociationDecision(
                False,
                f"called AE title {called!r} is not ours ({self.our_ae_title!r})",
                DIAG_CALLED_AE_NOT_RECOGNISED,
                "called_ae_not_ours",
            )
        known = [p for p in self.peers if p.ae_title == calling]
        if not known:
            return AssociationDecision(
                False,
                f"calling AE title {calling!r} is not in [[peers]]",
                DIAG_CALLING_AE_NOT_RECOGNISED,
                "calling_ae_unknown",
            )
        if not any(host_matches(p.host, peer_host) for p in known):
            allowed = ", ".join(p.host for p in known)
            return AssociationDecision(
                False,
                f"calling AE title {calling!r} is allowed from {allowed}, not from {peer_host}",
                DIAG_CALLING_AE_NOT_RECOGNISED,
                "host_not_allowed",
            )
        return AssociationDecision(True, f"peer {calling!r} from {peer_host}")
