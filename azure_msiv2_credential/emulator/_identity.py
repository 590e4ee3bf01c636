"""The managed identities an emulated VM has."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """One managed identity: the ids IMDS selectors refer to.

    ``resource_id`` is the ARM id (``mi_res_id`` on IMDS v2, ``msi_res_id`` on v1). For the
    system-assigned identity it is the VM's own ARM id.
    """

    client_id: str
    object_id: str
    resource_id: str
    system_assigned: bool = False


def user_assigned(name: str, subscription_id: str | None = None) -> Identity:
    """A user-assigned identity with fresh ids."""
    sub = subscription_id or str(uuid.uuid4())
    return Identity(
        client_id=str(uuid.uuid4()),
        object_id=str(uuid.uuid4()),
        resource_id=(
            f"/subscriptions/{sub}/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        ),
    )


def default_identities() -> tuple[Identity, ...]:
    """One system-assigned and two user-assigned identities, all with fresh ids."""
    sub = str(uuid.uuid4())
    system = Identity(
        client_id=str(uuid.uuid4()),
        object_id=str(uuid.uuid4()),
        resource_id=f"/subscriptions/{sub}/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
        system_assigned=True,
    )
    return (system, user_assigned("uami-one", sub), user_assigned("uami-two", sub))
