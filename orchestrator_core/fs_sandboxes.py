"""Each Run's file-system sandboxes: policy checks, root creation, its broker, and the
crash sweep (POLICY-3001, POLICY-3010, POLICY-3011, POLICY-3012).

The ``fs_op`` Step itself is :mod:`orchestrator_core.steps.fs_op`; this module holds what
the Run lifecycle and that Step share: the operator's limits (``fs_limits``, whose
allowed parents default to ``<data_dir>/sandboxes``), the check of a Run's ``fs_policy``
against the tenant's own directories, the creation of a record Run's roots once every
other check has passed, the broker of a Run, and the removal of the broker's temporary
files a crash left behind.
"""

from __future__ import annotations

import logging
import pathlib

import msgspec

from contracts.runs import FsPolicy
from orchestrator_core.config import ServerConfig
from orchestrator_core.fsbroker import FsBroker, FsLimits
from orchestrator_core.sandboxes import (
    create_roots,
    remove_created,
    sweep_temp_files,
    tenant_dirs,
)

__all__ = ["Sandboxes"]

log = logging.getLogger("orchestratord")


class Sandboxes:
    """The operator's file-system limits and the sandboxes of Runs within them.

    Args:
        config: the operator config (``fs_limits``, ``data_dir``).
    """

    def __init__(self, config: ServerConfig) -> None:
        limits = config.fs_limits
        if not limits.allowed_parents:
            default = pathlib.Path(config.data_dir).resolve() / "sandboxes"
            limits = msgspec.structs.replace(limits, allowed_parents=[str(default)])
        self.fs_limits: FsLimits = limits

    def validate_fs_policy(self, policy: FsPolicy, tenant: str) -> None:
        """Refuse a Run whose fs_policy leaves the tenant's directories or the operator's
        limits; touches no file (POLICY-3001, POLICY-3010).

        Raises:
            FsPolicyViolation: a root is outside the tenant's own directories.
            InvalidParams: a malformed root, an unknown op or a quota above the limits.
        """
        FsBroker(policy, self.fs_limits, tenant=tenant)

    def create_roots(self, policy: FsPolicy, tenant: str) -> list[str]:
        """Create a record Run's missing roots (mode 0700); call it after every other
        check of the Run passed (POLICY-3011).

        Returns:
            The directories created, for :meth:`discard_roots` if the Run is not stored.

        Raises:
            FsPolicyViolation, InvalidParams: as :meth:`validate_fs_policy`, or a root
                cannot be created.
        """
        parents = self.fs_limits.allowed_parents
        broker = FsBroker(policy, self.fs_limits, tenant=tenant)
        return create_roots(broker.roots, parents, tenant)

    @staticmethod
    def discard_roots(created: list[str]) -> None:
        """Remove directories :meth:`create_roots` made, where still empty."""
        remove_created(created)

    def sandbox_dirs(self, tenant: str) -> list[str]:
        """The tenant's own directory in each allowed parent (``GET /v1/capabilities``)."""
        return tenant_dirs(self.fs_limits.allowed_parents, tenant)

    def sweep_temp_files(self) -> int:
        """Remove temporary files a crash left in any sandbox (POLICY-3012).

        Returns:
            How many were removed.
        """
        removed = sweep_temp_files(self.fs_limits.allowed_parents)
        if removed:
            log.warning("removed %d leftover fs broker temporary file(s)", removed)
        return removed

    def broker(self, policy: FsPolicy, tenant: str) -> FsBroker:
        """A Run's broker: its fs_policy within its tenant's directories and the
        operator's limits.

        Raises:
            FsPolicyViolation: a root is no longer inside the tenant's directories.
            InvalidParams: the policy exceeds the operator limits.
        """
        return FsBroker(policy, self.fs_limits, tenant=tenant)
