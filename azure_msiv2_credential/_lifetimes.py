"""Every MSI v2 timing rule and timeout, each defined once next to its reason (PROTOCOL.md §8, DESIGN.md §3).

(The IMDS retry schedule lives with the retry rule in ``_imds.py``.)
"""

from __future__ import annotations

from typing import Optional

#: The reference reuses a certificate only while more than 24 h remain (PROTOCOL.md §8).
CERT_REUSE_MARGIN = 24 * 3600.0

#: Tolerated clock skew between this host and IMDS when checking a fresh certificate's notBefore.
CERT_NOT_BEFORE_SKEW = 300.0

#: Tokens living at least this long refresh at half-life, as MSAL does; shorter ones refresh
#: ``TOKEN_REFRESH_OFFSET`` before expiry, as azure-identity does.
HALF_LIFE_MIN_TOKEN_LIFETIME = 2 * 3600.0
TOKEN_REFRESH_OFFSET = 300.0

#: After ``refresh_on`` a failing refresh (or certificate rotation) is retried at most this often; meanwhile
#: the cached token (or the still-valid certificate) is served.
REFRESH_RETRY_INTERVAL = 30.0

#: A token is not handed out when it expires sooner than this: a caller needs time to use it. The token
#: service must therefore grant more than this, or every call would fetch again.
TOKEN_EXPIRY_SKEW = 30.0

#: "MSI v2 cannot run here" (no IMDS, a v1-only host) is remembered this long, so a credential in a chain on
#: such a host costs one probe per interval instead of one (with retries) per call.
UNAVAILABLE_RECHECK_INTERVAL = 300.0

#: IMDS is link-local: it answers in milliseconds or not at all. Inside a ChainedTokenCredential the first
#: contact is a probe with a short timeout, as azure-identity does, so the chain moves on quickly.
IMDS_CONNECT_TIMEOUT = 2.0
IMDS_READ_TIMEOUT = 20.0
IMDS_PROBE_TIMEOUT = 1.0

#: The token leg crosses the network to Entra ID: generous, but never azure-core's 300 s default.
TOKEN_LEG_CONNECT_TIMEOUT = 10.0
TOKEN_LEG_READ_TIMEOUT = 30.0

#: The token leg retries once on 5xx (PROTOCOL.md §8).
TOKEN_LEG_5XX_RETRIES = 1


def certificate_rotation_time(not_before: float, not_after: float) -> float:
    """When to mint a new certificate: ``max(notAfter - 24 h, notBefore + lifetime / 2)`` (ours, §8).

    Same as the reference for certificates living more than two days; half-life for short-lived ones, so
    we do not re-mint on every acquisition when IMDS issues certificates for less than a day.
    """
    return max(not_after - CERT_REUSE_MARGIN, not_before + (not_after - not_before) / 2)


def token_refresh_time(
    issued_at: float, expires_on: float, refresh_in: Optional[float], cert_rotation_at: float
) -> float:
    """When a cached token should be refreshed proactively.

    The service's ``refresh_in`` wins when sent; else half-life for tokens living >= 2 h, else 5 minutes
    before expiry. Never later than the certificate's rotation, so tokens follow the certificate.
    """
    lifetime = expires_on - issued_at
    if refresh_in is not None and refresh_in > 0:
        refresh_on = issued_at + refresh_in
    elif lifetime >= HALF_LIFE_MIN_TOKEN_LIFETIME:
        refresh_on = issued_at + lifetime / 2
    else:
        refresh_on = expires_on - TOKEN_REFRESH_OFFSET
    return min(refresh_on, expires_on, cert_rotation_at)
