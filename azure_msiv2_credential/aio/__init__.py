"""Async twins: ``MsiV2ManagedIdentityCredential``, ``MtlsPopTransport`` and ``MtlsPopAuthenticationPolicy``."""

from ..transport._aiohttp import MtlsPopTransport
from ..transport._policy import AsyncMtlsPopAuthenticationPolicy as MtlsPopAuthenticationPolicy
from ._credential import MsiV2ManagedIdentityCredential

__all__ = ["MsiV2ManagedIdentityCredential", "MtlsPopAuthenticationPolicy", "MtlsPopTransport"]
