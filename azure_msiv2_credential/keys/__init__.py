"""Binding keys: the :class:`KeyProvider` protocol and its software and KeyGuard implementations."""

from ._base import STRENGTH_ORDER, BindingKey, BindingStrength, KeyProvider
from .keyguard import KeyGuardKey, KeyGuardKeyProvider
from .software import SoftwareKey, SoftwareKeyProvider

__all__ = [
    "STRENGTH_ORDER",
    "BindingKey",
    "BindingStrength",
    "KeyGuardKey",
    "KeyGuardKeyProvider",
    "KeyProvider",
    "SoftwareKey",
    "SoftwareKeyProvider",
]
