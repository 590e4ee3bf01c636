"""Async twins: ``MsiV2ManagedIdentityCredential``, ``MtlsPopTransport`` and ``MtlsPopAuthenticationPolicy``."""

try:
    import aiohttp  # noqa: F401  (the async credential and transport are built on it)
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("azure_msiv2_credential.aio needs aiohttp: pip install 'azure-msiv2-credential[aio]'") from error

from ..transport._aiohttp import MtlsPopTransport
from ..transport._policy import AsyncMtlsPopAuthenticationPolicy as MtlsPopAuthenticationPolicy
from ._credential import MsiV2ManagedIdentityCredential

__all__ = ["MsiV2ManagedIdentityCredential", "MtlsPopAuthenticationPolicy", "MtlsPopTransport"]
