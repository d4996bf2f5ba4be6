"""Stream tickets: a browser opens one Step's stream without the bearer token in the URL
(NERVE-4054).

``EventSource`` cannot send an ``Authorization`` header, and a bearer token in a URL ends
up in logs and history. A client holding the token asks
``POST /v1/steps/{step_id}/stream-ticket`` for a ticket, then opens
``GET /v1/steps/{step_id}/stream?ticket=<ticket>``. A ticket is
``<expiry ms>.<HMAC-SHA256(key, step_id, tenant, expiry)>`` (base64url): nothing is
stored, the key is random per server start (a restart voids every ticket), the tenant
is not written in it (it is found by checking the MAC against each configured tenant,
in constant time), and it opens that one Step only until the injected clock's
monotonic time passes its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

__all__ = ["MAX_TICKET_CHARS", "TICKET_TTL_MS", "StreamTickets"]

TICKET_TTL_MS = 60_000
"""How long a ticket is accepted after it is issued (ms)."""
MAX_TICKET_CHARS = 128
"""A longer ``ticket`` is refused unread."""


class StreamTickets:
    """Issues and checks stream tickets with a key generated when it is built.

    Args:
        key: the HMAC key (32 random bytes unless a test passes one).
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def _mac(self, step_id: str, tenant: str, expiry_ms: int) -> str:
        msg = b"\0".join((step_id.encode(), tenant.encode(), str(expiry_ms).encode()))
        digest = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, step_id: str, tenant: str, now_s: float) -> str:
        """A ticket for ``step_id`` of ``tenant``, valid for :data:`TICKET_TTL_MS`.

        Args:
            step_id: a Step the tenant can read (checked by the caller).
            tenant: the caller's tenant.
            now_s: the clock's monotonic time (s).

        Returns:
            ``<expiry ms>.<mac>``, 50-60 URL-safe characters.
        """
        expiry_ms = int(now_s * 1000) + TICKET_TTL_MS
        return f"{expiry_ms}.{self._mac(step_id, tenant, expiry_ms)}"

    def tenant_of(self, ticket: str, step_id: str, tenants: Iterable[str],
                  now_s: float) -> str | None:
        """The tenant a ticket was issued to for ``step_id``, or None.

        Args:
            ticket: the ``ticket`` query parameter as sent.
            step_id: the Step of the request's path.
            tenants: every configured tenant (each is checked, in constant time).
            now_s: the clock's monotonic time (s).

        Returns:
            None for a malformed, expired, other-step or unknown ticket.
        """
        if len(ticket) > MAX_TICKET_CHARS:
            return None
        expiry, _, mac = ticket.partition(".")
        if not (expiry.isascii() and expiry.isdigit() and len(expiry) <= 18):
            return None
        expiry_ms = int(expiry)
        if now_s * 1000 >= expiry_ms:
            return None
        found = None
        for tenant in sorted(set(tenants)):
            if hmac.compare_digest(self._mac(step_id, tenant, expiry_ms).encode(),
                                   mac.encode("utf-8", "replace")):
                found = tenant
        return found
