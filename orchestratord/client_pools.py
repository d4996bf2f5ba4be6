"""The clients' pool management calls (PLACE-5100, PLACE-5108), as Calls of the sans-IO
core (NERVE-4110), and the two methods both clients take from
:class:`AsyncPoolCalls` and :class:`PoolCalls`."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from contracts.pools import PoolInfo, ReplicaInfo
from orchestratord.client_calls import Call

__all__ = ["AsyncPoolCalls", "PoolCalls", "drain_replica", "provision_replica"]

T = TypeVar("T")
_pool = msgspec.json.Decoder(PoolInfo)
_replica = msgspec.json.Decoder(ReplicaInfo)


def _pool_of(resp: httpx.Response) -> PoolInfo:
    return _pool.decode(resp.content)


def _replica_of(resp: httpx.Response) -> ReplicaInfo:
    return _replica.decode(resp.content)


def provision_replica(body: dict[str, Any]) -> Call[PoolInfo]:
    """``POST /v1/pools/provision`` of a ProvisionRequest body (``url``, ``pool_id``...):
    the pool's view once the replica has joined it (PLACE-5100). Not idempotent (each
    success is a new replica). Sent, it raises ``PolicyDenied``, ``InvalidParams`` or
    ``Conflict``, each naming the field in ``data["field"]``."""
    return Call("POST", "/v1/pools/provision", _pool_of, body=body, idempotent=False)


def drain_replica(pool_id: str, replica: str) -> Call[ReplicaInfo]:
    """``POST /v1/pools/{pool_id}/replicas/{replica}/drain``: the replica's view, now
    ``draining`` (PLACE-5108); draining it again answers the same, so it is idempotent.
    Sent, it raises ``NotFound`` for an unknown pool or replica."""
    return Call("POST", f"/v1/pools/{quote(pool_id, safe='')}/replicas/"
                f"{quote(replica, safe='')}/drain", _replica_of)


class AsyncPoolCalls:
    """The async client's pool management methods (mixed into ``AsyncClient``)."""

    async def send(self, call: Call[T]) -> T:
        """Send one call (the client's own)."""
        raise NotImplementedError

    async def provision_replica(self, **body: Any) -> PoolInfo:
        """``POST /v1/pools/provision`` (PLACE-5100); an operator's call."""
        return await self.send(provision_replica(body))

    async def drain_replica(self, pool_id: str, replica: str) -> ReplicaInfo:
        """``POST /v1/pools/{pool_id}/replicas/{replica}/drain`` (PLACE-5108)."""
        return await self.send(drain_replica(pool_id, replica))


class PoolCalls:
    """The sync client's pool management methods (mixed into ``Client``)."""

    def send(self, call: Call[T]) -> T:
        """Send one call (the client's own)."""
        raise NotImplementedError

    def provision_replica(self, **body: Any) -> PoolInfo:
        """``POST /v1/pools/provision`` (PLACE-5100); an operator's call."""
        return self.send(provision_replica(body))

    def drain_replica(self, pool_id: str, replica: str) -> ReplicaInfo:
        """``POST /v1/pools/{pool_id}/replicas/{replica}/drain`` (PLACE-5108)."""
        return self.send(drain_replica(pool_id, replica))
