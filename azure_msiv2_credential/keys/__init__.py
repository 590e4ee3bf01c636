"""Binding keys: the :class:`KeyProvider` protocol and its software and KeyGuard implementations."""

from ._base import STRENGTH_ORDER, BindingKey, BindingStrength, KeyProvider
from .software import SoftwareKey, SoftwareKeyProvider

__all__ = ["STRENGTH_ORDER", "BindingKey", "BindingStrength", "KeyProvider", "SoftwareKey", "SoftwareKeyProvider"]
