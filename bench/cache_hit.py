"""Cache-hit cost and request counts of MsiV2ManagedIdentityCredential, as ratios against baselines run here.

One process, an in-process emulator, nothing mocked. Measures, per call, a cache hit of ``get_token_info`` for

- our credential (MSI v2, sync),
- azure-identity's ``ManagedIdentityCredential`` (MSI v1 against the same emulator),
- a floor: a ``threading.Lock`` acquire/release, a dict lookup and a ``time.time()`` read,

and prints ``azure-identity / ours`` (target >= 10) and ``ours / floor`` (target <= 5). Then counts the
HTTP requests the emulator saw for a cold acquisition (3), a refresh with a cached certificate (1),
24 threads cold (1 issuecredential, 1 token) and 50 coroutines cold (the same).

Exit status 0 when every target is met, 1 otherwise. Usage: ``python bench/cache_hit.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import timeit
from functools import partial
from typing import Any, Callable

from azure.identity import ManagedIdentityCredential

from azure_msiv2_credential import MsiV2ManagedIdentityCredential, SoftwareKeyProvider
from azure_msiv2_credential.aio import MsiV2ManagedIdentityCredential as AsyncMsiV2ManagedIdentityCredential
from azure_msiv2_credential.emulator import Emulator

SCOPE = "https://vault.azure.net/.default"
#: What azure-core's BearerTokenCredentialPolicy passes for clients that enable CAE (Key Vault, Storage...).
SDK_OPTIONS: Any = {"enable_cae": True}
REPEATS = 7  # best of this many timing runs
RUN_SECONDS = 0.2  # target duration of one timing run

TARGET_VS_AZURE_IDENTITY = 10.0  # ours must be at least this many times faster than azure-identity's hit
TARGET_VS_FLOOR = 5.0  # ours may cost at most this many floors
THREADS = 24
COROUTINES = 50


class Clock:
    """A ``() -> float`` epoch clock that moves only when told (for the refresh scenario)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def per_call(fn: Callable[[], Any]) -> float:
    """Best-of-``REPEATS`` seconds per call of ``fn``."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * RUN_SECONDS / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=REPEATS, number=number)) / number


def v2(emu: Emulator, **kwargs: Any) -> MsiV2ManagedIdentityCredential:
    return MsiV2ManagedIdentityCredential(
        mtls_proof_of_possession=True,
        key_provider=SoftwareKeyProvider(),
        connection_verify=emu.ca_bundle_path,
        **kwargs,
    )


def requests_seen(emu: Emulator) -> dict[str, int]:
    return {name: count for name, count in sorted(emu.calls.items()) if count}


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, label: str, ok: bool, detail: str) -> None:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}: {detail}")
        if not ok:
            self.failures.append(label)


def bench_hits(emu: Emulator, report: Report) -> None:
    ours = v2(emu)
    ours.get_token_info(SCOPE)
    v1 = ManagedIdentityCredential()
    v1.get_token_info(SCOPE)
    emu.reset_calls()

    lock = threading.Lock()
    table = {SCOPE: object()}

    def floor() -> Any:
        with lock:
            entry = table.get(SCOPE)
        time.time()
        return entry

    t_floor = per_call(floor)
    t_ours = per_call(partial(ours.get_token_info, SCOPE))
    t_ours_cae = per_call(partial(ours.get_token_info, SCOPE, options=SDK_OPTIONS))
    t_v1 = per_call(partial(v1.get_token_info, SCOPE))
    hits_only = not any(emu.calls.values())
    ours.close()
    v1.close()

    print("cache hit of get_token_info, best of", REPEATS, "runs, per call:")
    for label, seconds in (
        ("ours: MsiV2ManagedIdentityCredential (MSI v2)", t_ours),
        ('ours, options={"enable_cae": True} (as SDK clients call)', t_ours_cae),
        ("azure-identity ManagedIdentityCredential (MSI v1)", t_v1),
        ("floor: Lock acquire/release + dict lookup + time.time()", t_floor),
    ):
        print(f"  {label:<58}{seconds * 1e9:9.0f} ns")
    vs_v1, vs_floor = t_v1 / t_ours, t_ours / t_floor
    report.check("no HTTP request during the hit loops", hits_only, str(requests_seen(emu) or "none"))
    report.check(
        "ours vs azure-identity", vs_v1 >= TARGET_VS_AZURE_IDENTITY, f"{vs_v1:.1f}x faster (target >= 10x)"
    )
    report.check("ours vs floor", vs_floor <= TARGET_VS_FLOOR, f"{vs_floor:.2f}x the floor (target <= 5x)")
    vs_v1, vs_floor = t_v1 / t_ours_cae, t_ours_cae / t_floor
    ok = vs_v1 >= TARGET_VS_AZURE_IDENTITY and vs_floor <= TARGET_VS_FLOOR
    report.check("ours with SDK options", ok, f"{vs_v1:.1f}x faster than azure-identity, {vs_floor:.2f}x the floor")


def bench_requests(emu: Emulator, report: Report) -> None:
    print("HTTP requests seen by the emulator:")

    emu.reset_calls()
    clock = Clock()
    cred = v2(emu, _clock=clock)
    info = cred.get_token_info(SCOPE)
    seen = requests_seen(emu)
    report.check("cold acquisition", sum(seen.values()) == 3, f"{sum(seen.values())} {seen} (target 3)")

    assert info.refresh_on is not None
    clock.now = info.refresh_on + 1  # past refresh_on, the certificate still fresh
    emu.reset_calls()
    refreshed = cred.get_token_info(SCOPE)
    seen = requests_seen(emu)
    ok = seen == {"token": 1} and refreshed.token != info.token
    report.check("refresh with a cached certificate", ok, f"{sum(seen.values())} {seen} (target 1: token)")
    cred.close()

    emu.reset_calls()
    cred = v2(emu)
    barrier = threading.Barrier(THREADS)
    tokens: list[str] = []

    def worker() -> None:
        barrier.wait()
        tokens.append(cred.get_token_info(SCOPE).token)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen = requests_seen(emu)
    ok = seen.get("issuecredential") == 1 and seen.get("token") == 1 and len(tokens) == THREADS
    report.check(f"{THREADS} threads cold", ok, f"{seen} (target 1 issuecredential, 1 token)")
    cred.close()

    async def coroutines() -> list[str]:
        async with AsyncMsiV2ManagedIdentityCredential(
            mtls_proof_of_possession=True, key_provider=SoftwareKeyProvider(), connection_verify=emu.ca_bundle_path
        ) as acred:
            infos = await asyncio.gather(*(acred.get_token_info(SCOPE) for _ in range(COROUTINES)))
        return [i.token for i in infos]

    emu.reset_calls()
    tokens = asyncio.run(coroutines())
    seen = requests_seen(emu)
    ok = seen.get("issuecredential") == 1 and seen.get("token") == 1 and len(set(tokens)) == 1
    report.check(f"{COROUTINES} coroutines cold", ok, f"{seen} (target 1 issuecredential, 1 token)")


def main() -> int:
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
                 "MSAL_MI_DISABLE_IMDS_V2"):
        os.environ.pop(name, None)
    started = time.monotonic()
    report = Report()
    with Emulator() as emu:
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = emu.imds_url
        print(f"Python {sys.version.split()[0]}, emulator at {emu.imds_url}")
        bench_hits(emu, report)
        bench_requests(emu, report)
    verdict = "FAIL: " + ", ".join(report.failures) if report.failures else "PASS"
    print(f"{verdict} ({time.monotonic() - started:.1f} s)")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
