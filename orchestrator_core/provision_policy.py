"""Who may provision engine replicas at run time, and where they may live (PLACE-5101,
PLACE-5103, PLACE-5104).

:class:`ProvisioningConfig` is the operator's switch (off by default), the tenants allowed
to manage pools, the engine hosts allowed besides loopback and the bounds. Its checks are
pure: no DNS lookup, no request. :func:`check_engine_url` is the host rule a provisioned
replica's URL must pass (SSRF): loopback or an allowed host, and never a link-local,
metadata, unspecified or multicast address, whatever the allow-list says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

import msgspec

from contracts.errors import InvalidParams, PolicyDenied

__all__ = ["METADATA_HOSTS", "ProvisioningConfig", "check_engine_url", "check_operator",
           "check_pool_id"]

METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog",
                            "instance-data", "instance-data.ec2.internal"})
"""Cloud metadata service names, refused even when listed in ``allowed_hosts``."""

_POOL_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class ProvisioningConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Run-time provisioning of remote replicas (``POST /v1/pools/provision``).

    Attributes:
        enabled: the routes answer 403 ``POLICY_DENIED`` while False (the default).
        operator_tenants: tenants (values of ``auth_tokens``; ``default`` on a server
            without tokens) that may provision and drain replicas; empty: nobody.
        allowed_hosts: engine host names or IP literals allowed besides loopback ones
            (compared exactly, case-insensitively; names are trusted as the operator's
            DNS resolves them).
        max_replicas: replicas provisioned at run time that may be live at once,
            server-wide.
        removed_kept: removed replicas each pool keeps in its view (the oldest go first).
        validate_timeout_ms: the whole validation of one replica (health, identity), in
            milliseconds; a server slower than that is refused.

    Raises:
        InvalidParams: ``max_replicas`` or ``validate_timeout_ms`` is not positive, or
            ``removed_kept`` is negative; ``data["field"]`` names it.
    """

    enabled: bool = False
    operator_tenants: list[str] = []
    allowed_hosts: list[str] = []
    max_replicas: int = 16
    removed_kept: int = 16
    validate_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_replicas", "validate_timeout_ms"):
            if getattr(self, name) <= 0:
                raise InvalidParams(f"config: provisioning.{name} must be positive",
                                    data={"field": f"provisioning.{name}"})
        if self.removed_kept < 0:
            raise InvalidParams("config: provisioning.removed_kept must not be negative",
                                data={"field": "provisioning.removed_kept"})


def check_operator(config: ProvisioningConfig, tenant: str) -> None:
    """Refuse a caller who may not manage pools (PLACE-5101).

    Raises:
        PolicyDenied: provisioning is off (``data["field"]`` is ``provisioning.enabled``),
            or ``tenant`` is not an operator tenant (``data["field"]`` is
            ``authorization``).
    """
    if not config.enabled:
        raise PolicyDenied("run-time provisioning is off on this server",
                           data={"field": "provisioning.enabled"})
    if tenant not in config.operator_tenants:
        raise PolicyDenied("only an operator may provision or drain replicas",
                           data={"field": "authorization"})


def check_pool_id(pool_id: str) -> None:
    """Refuse a pool id that is not 1..64 of ``[A-Za-z0-9._-]`` (PLACE-5102).

    Raises:
        InvalidParams: naming ``pool_id`` in ``data["field"]``.
    """
    if not 0 < len(pool_id) <= 64 or not set(pool_id) <= _POOL_ID_CHARS:
        raise InvalidParams("pool_id must be 1 to 64 of A-Z a-z 0-9 . _ -",
                            data={"field": "pool_id"})


def _refused_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may never be an engine's, or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip == ipaddress.ip_address("fd00:ec2::254"):
        return "link-local or metadata address"
    if ip.is_unspecified or ip.is_multicast:
        return "unspecified or multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address(
            "255.255.255.255"):
        return "broadcast address"
    return None


def check_engine_url(url: str, allowed_hosts: Collection[str]) -> str:
    """The normalized base URL of a replica to provision, if its host may be one (PLACE-5103).

    A URL is ``http`` or ``https``, with a host, a port in 1..65535 if any, no user
    info, no query or fragment and no path but ``/``. Its host is refused when it is a
    link-local (``169.254.0.0/16``, ``fe80::/10``, cloud metadata included),
    ``fd00:ec2::254``, unspecified, multicast or broadcast address, or a metadata service
    name (:data:`METADATA_HOSTS`), even when listed. Otherwise it is allowed when it is
    ``localhost``, a loopback IP literal, or listed in ``allowed_hosts``. Other spellings
    of an address (``2130706433``, ``127.1``) are names, allowed only when listed. No
    name is resolved. The URL is split with :func:`urllib.parse.urlsplit` (string
    operations: no regular expression runs on request text, DESIGN.md §11).

    Args:
        url: the URL as the request gave it.
        allowed_hosts: the operator's ``provisioning.allowed_hosts``.

    Returns:
        ``scheme://host[:port]``.

    Raises:
        InvalidParams: the URL is malformed (``data["field"]`` is ``url``).
        PolicyDenied: its host is refused or not allowed (``data["field"]`` is ``url``,
            ``data["host"]`` the host).
    """
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise InvalidParams("url holds a space or a control character", data={"field": "url"})
    try:
        parsed = urlsplit(url)
        port = parsed.port
    except ValueError as exc:
        raise InvalidParams(f"url is not a URL: {exc}", data={"field": "url"}) from exc
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidParams("url must be http:// or https:// with a host",
                            data={"field": "url"})
    if "@" in parsed.netloc or parsed.query or parsed.fragment or \
            parsed.path not in ("", "/") or url.endswith(("?", "#")):
        raise InvalidParams("url must be a base URL: no user info, path, query or fragment",
                            data={"field": "url"})
    if port is not None and not 0 < port < 65536:
        raise InvalidParams("url's port must be 1 to 65535", data={"field": "url"})
    host = parsed.hostname.rstrip(".")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    why = _refused_ip(ip) if ip is not None else (
        "cloud metadata service name" if host in METADATA_HOSTS else None)
    if why is not None:
        raise PolicyDenied(f"engine host {host!r} is refused: {why}",
                           data={"field": "url", "host": host})
    listed = host in {h.lower().rstrip(".") for h in allowed_hosts}
    loopback = host == "localhost" or (ip is not None and ip.is_loopback)
    if not (listed or loopback):
        raise PolicyDenied(f"engine host {host!r} is neither loopback nor in "
                           "provisioning.allowed_hosts", data={"field": "url", "host": host})
    shown = f"[{host}]" if ip is not None and ip.version == 6 else host
    return f"{parsed.scheme}://{shown}" + (f":{port}" if port is not None else "")
