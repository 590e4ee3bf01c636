"""Azure Managed Identity v2 (mTLS proof-of-possession) for the Azure SDK for Python.

Public names only; see the README for the gating table and troubleshooting.
"""

import logging

from ._credential import MsiV2ManagedIdentityCredential
from ._errors import ErrorCode, MsiV2Error, MsiV2UnavailableError
from ._version import VERSION as __version__
from .keys import KeyGuardKeyProvider, SoftwareKeyProvider
from .transport import MtlsPopAuthenticationPolicy, MtlsPopTransport

__all__ = [
    "ErrorCode",
    "KeyGuardKeyProvider",
    "MsiV2Error",
    "MsiV2ManagedIdentityCredential",
    "MsiV2UnavailableError",
    "MtlsPopAuthenticationPolicy",
    "MtlsPopTransport",
    "SoftwareKeyProvider",
    "__version__",
]

# A library logs; the application decides where records go (no "last resort" printing to stderr).
logging.getLogger(__name__).addHandler(logging.NullHandler())
