"""``serve``: run the emulator in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from ._server import Emulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="azure-msiv2 emulator",
        description="Local IMDS v2 + mTLS token service + token-bound resource (loopback only).",
    )
    parser.add_argument(
        "--cert-lifetime", type=float, default=2 * 24 * 3600, help="issued certificate lifetime, seconds"
    )
    parser.add_argument("--token-lifetime", type=float, default=3600, help="access token lifetime, seconds")
    parser.add_argument(
        "--require-attestation", action="store_true", help="reject issuecredential without attestation_token"
    )
    return parser


def serve(argv: Sequence[str] | None = None, *, stop: threading.Event | None = None) -> int:
    """Start the emulator, print how to point a client at it, and block until interrupted.

    ``stop`` lets a caller (a test) end the run without a signal.
    """
    args = _parser().parse_args(list(argv) if argv is not None else None)
    done = stop or threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    installed = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_signal) if installed else None
    try:
        with Emulator(
            cert_lifetime=args.cert_lifetime,
            token_lifetime=args.token_lifetime,
            require_attestation=args.require_attestation,
        ) as emu:
            print(f"AZURE_POD_IDENTITY_AUTHORITY_HOST={emu.imds_url}")
            print(f"CA bundle:      {emu.ca_bundle_path}")
            print(f"token service:  {emu.token_service_url}")
            print(f"resource:       {emu.resource_url}")
            print(f"tenant:         {emu.tenant_id}")
            for identity in emu.identities:
                kind = "system-assigned" if identity.system_assigned else "user-assigned"
                print(f"identity ({kind}): client_id={identity.client_id}")
            print("Press Ctrl-C to stop.", flush=True)
            try:
                while not done.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)
    return 0
