"""Local emulator of IMDS v2, an mTLS token service and a token-bound resource.

A separate server that shares only the wire contract (PROTOCOL.md) with the credential: it imports
nothing from the rest of the package. Loopback only, real sockets, real TLS::

    with Emulator() as emu:
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = emu.imds_url
        ...  # trust emu.ca_bundle_path; read emu.calls; emu.inject("token", "invalid_client")
"""

from __future__ import annotations

from ._cli import serve
from ._identity import Identity
from ._server import Emulator
from ._state import ResourceRequest

__all__ = ["Emulator", "Identity", "ResourceRequest", "serve"]
