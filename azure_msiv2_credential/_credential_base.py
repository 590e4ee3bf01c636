"""The constructor and the public plumbing shared by the sync and async credentials."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from azure.core.pipeline.policies import HttpLoggingPolicy, UserAgentPolicy

from ._attestation import Attestor
from ._cache import CredentialCache
from ._core import CredentialCore
from ._errors import ErrorCode, MsiV2ConfigurationError
from ._lifetimes import TOKEN_LEG_CONNECT_TIMEOUT, TOKEN_LEG_READ_TIMEOUT
from ._registry import BindingRegistry
from ._version import USER_AGENT
from .keys import KeyProvider


class CredentialBase:
    """Gating (DESIGN.md §2), option checks and the v1/v2 routing; subclasses add the I/O."""

    _delegate: Any
    _core: CredentialCore
    _cache: CredentialCache
    _clock: Callable[[], float]

    def __init__(
        self,
        *,
        client_id: Optional[str] = None,
        identity_config: Optional[Mapping[str, str]] = None,
        mtls_proof_of_possession: bool = False,
        with_attestation_support: bool = False,
        key_provider: Optional[KeyProvider] = None,
        minimum_binding_strength: Optional[str] = None,
        attestor: Optional[Attestor] = None,
        **kwargs: Any,
    ) -> None:
        for name, flag in (
            ("mtls_proof_of_possession", mtls_proof_of_possession),
            ("with_attestation_support", with_attestation_support),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, not {flag!r}")
        if with_attestation_support and not mtls_proof_of_possession:
            raise MsiV2ConfigurationError(
                "with_attestation_support=True requires mtls_proof_of_possession=True",
                error_code=ErrorCode.ATTESTATION_REQUIRES_POP,
            )
        self._delegate = None
        if not mtls_proof_of_possession:
            # MSI v2 options on the v1 path would be silently ignored: refuse them instead.
            given = [
                name
                for name, value in (
                    ("key_provider", key_provider),
                    ("minimum_binding_strength", minimum_binding_strength),
                    ("attestor", attestor),
                )
                if value is not None
            ]
            if given:
                raise ValueError(f"{', '.join(given)} applies to MSI v2 only; pass mtls_proof_of_possession=True")
            self._delegate = self._v1_credential(client_id=client_id, identity_config=identity_config, **kwargs)
            return
        self._clock = kwargs.pop("_clock", time.time)
        sleep = kwargs.pop("_sleep", None)
        self._core = CredentialCore(
            client_id=client_id,
            identity_config=identity_config,
            with_attestation_support=with_attestation_support,
            key_provider=key_provider,
            minimum_binding_strength=minimum_binding_strength,
            attestor=attestor,
            clock=self._clock,
        )
        self._cache = self._core.cache
        self._open(kwargs, sleep)

    def _v1_credential(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _open(self, kwargs: dict[str, Any], sleep: Any) -> None:
        """Build the IMDS and token-leg pipelines and the single-flight (sync or async)."""
        raise NotImplementedError

    @property
    def binding_registry(self) -> BindingRegistry:
        """Token -> binding registry read by ``MtlsPopTransport`` (MSI v2 path only)."""
        if self._delegate is not None:
            raise AttributeError("binding_registry exists only with mtls_proof_of_possession=True")
        return self._core.registry

    def __repr__(self) -> str:
        name = ("aio." if ".aio." in type(self).__module__ else "") + type(self).__name__
        if self._delegate is not None:
            return f"{name}(mtls_proof_of_possession=False)"
        return (
            f"{name}(identity={str(self._core.selector)!r}, mtls_proof_of_possession=True, "
            f"with_attestation_support={self._core.attest})"
        )


def token_transport_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Transport options for the token leg: the caller's TLS/timeout/proxy settings over our defaults."""
    verify = kwargs.get("connection_verify", True)
    if verify is False:
        raise ValueError(
            "turning connection_verify off (False) is not supported: MSI v2 never switches TLS verification off"
        )
    if isinstance(verify, str) and not os.path.exists(verify):
        raise ValueError(f"connection_verify names a CA bundle that does not exist: {verify!r}")
    options: dict[str, Any] = {
        "connection_verify": verify,
        "connection_timeout": TOKEN_LEG_CONNECT_TIMEOUT,
        "read_timeout": TOKEN_LEG_READ_TIMEOUT,
    }
    for name in ("connection_timeout", "read_timeout", "proxies", "use_env_settings"):
        if name in kwargs:
            options[name] = kwargs[name]
    return options


def pipeline_policies(kwargs: Mapping[str, Any], *middle: Any) -> list[Any]:
    """Policies of our IMDS and token-leg pipelines, ``middle`` (e.g. the retry rule) between the two.

    No NetworkTraceLoggingPolicy: it would log bodies (CSRs, tokens); HttpLoggingPolicy redacts every header
    not on its allow-list."""
    return [UserAgentPolicy(base_user_agent=USER_AGENT, **kwargs), *middle, HttpLoggingPolicy(**kwargs)]


def imds_transport_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """IMDS is link-local: never through a proxy (it would see CSRs and attestation tokens in the clear)."""
    return {**kwargs, "use_env_settings": False}
