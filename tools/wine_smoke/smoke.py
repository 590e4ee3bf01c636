"""Wine smoke (DESIGN.md section 5, layer 4): the unchanged generated cffi module and the ``_native`` wrappers
against a real Windows API implementation (Wine's ncrypt.dll, crypt32.dll, winhttp.dll) under a real
Windows CPython. Run by ``tools/wine_smoke/run.sh`` as ``python.exe smoke.py --repo Z:\\path\\to\\repo``.

It imports only ``azure_msiv2_credential._native.*``: the package's ``__init__`` pulls in azure-core,
requests and the credential, none of which this interpreter has (or needs). :func:`import_native` puts a
stub ``azure_msiv2_credential`` package in ``sys.modules`` whose ``__path__`` is the repository's package
folder, so ``import azure_msiv2_credential._native`` finds the real submodules there without running the
real ``__init__``.

One line per check: ``PASS``, ``FAIL`` (unexpected: the exit status becomes 1), ``EXPECTED-FAIL`` (what
Wine does not implement, with the status code it returned; printed, not fatal) or ``INFO`` (behaviour worth
knowing that says nothing about the binding). ``MSIV2_WINE_SMOKE_TRACEBACK=1`` adds a traceback to each FAIL.
Nothing here is Wine-specific: on real Windows (``py smoke.py --repo .``) the EXPECTED-FAIL lines should
become PASS (and the named test keys are deleted again).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib
import importlib.machinery
import os
import platform
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
import types
import uuid
from typing import Any, Callable, Optional

PACKAGE = "azure_msiv2_credential"
PASS, FAIL, XFAIL, INFO = "PASS", "FAIL", "EXPECTED-FAIL", "INFO"
RSA_BITS = 2048
PSS_SALT = 32


# -- reporting (pure Python; unit-tested on Linux by tests/wine) -----------------------------------


class Report:
    """Collects one line per check and decides the exit status: non-zero only for an unexpected failure."""

    def __init__(self, out: Optional[Callable[[str], None]] = None) -> None:
        self.results: list[tuple[str, str, str]] = []
        self._out = out or (lambda line: print(line, flush=True))

    def record(self, status: str, name: str, detail: str = "") -> None:
        self.results.append((status, name, detail))
        self._out(f"{status:<13} {name}" + (f": {detail}" if detail else ""))

    def check(self, name: str, action: Callable[[], Any], describe: Optional[Callable[[Any], str]] = None) -> Any:
        """Run ``action``; PASS with ``describe(result)``, or FAIL with the exception (then return None)."""
        try:
            result = action()
        except Exception as exc:
            self.record(FAIL, name, describe_exception(exc))
            if os.environ.get("MSIV2_WINE_SMOKE_TRACEBACK"):
                traceback.print_exc()
            return None
        self.record(PASS, name, describe(result) if describe else "")
        return result if result is not None else True

    def expect_refusal(self, name: str, action: Callable[[], Any], why: str, refusal: type[BaseException]) -> Any:
        """A call Wine is known not to implement: a ``refusal`` exception is EXPECTED-FAIL (with its code);
        success is PASS (Wine caught up); any other exception is a FAIL (a binding problem, not a Wine gap)."""
        try:
            result = action()
        except refusal as exc:
            self.record(XFAIL, name, f"{describe_exception(exc)} [{why}]")
            return None
        except Exception as exc:
            self.record(FAIL, name, describe_exception(exc))
            return None
        self.record(PASS, name, "accepted (Wine implements it after all)")
        return result if result is not None else True

    def note(self, name: str, action: Callable[[], str], tolerated: tuple[type[BaseException], ...] = ()) -> None:
        """Behaviour worth printing that proves nothing about the binding: INFO with ``action()``'s text, or
        with a ``tolerated`` exception; any other exception is a FAIL."""
        try:
            text = action()
        except tolerated as exc:
            text = describe_exception(exc)
        except Exception as exc:
            self.record(FAIL, name, describe_exception(exc))
            return
        self.record(INFO, name, text)

    def counts(self) -> dict[str, int]:
        found = {PASS: 0, FAIL: 0, XFAIL: 0, INFO: 0}
        for status, _, _ in self.results:
            found[status] = found.get(status, 0) + 1
        return found

    def exit_status(self) -> int:
        counts = self.counts()
        return 1 if counts[FAIL] or not counts[PASS] else 0

    def summary(self) -> str:
        counts = self.counts()
        return f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[XFAIL]} expected failures, {counts[INFO]} notes"


def describe_exception(exc: BaseException) -> str:
    """``Type: message``, with the unsigned hex status when the exception carries a ``code``."""
    code = getattr(exc, "code", None)
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(code, int) and f"{code & 0xFFFFFFFF:08X}" not in text.upper():
        text += f" (0x{code & 0xFFFFFFFF:08X})"
    return text


# -- importing _native without the package __init__ ------------------------------------------------


def import_native(repo_root: str) -> types.ModuleType:
    """``azure_msiv2_credential._native`` from ``repo_root``, without executing the package ``__init__``.

    A stub package module (empty namespace, ``__path__`` = the real package folder) stands in for
    ``azure_msiv2_credential``; the import system then finds ``_native`` and its submodules (including the
    generated ``_winapi``) in that folder as usual. Refuses to replace a package that is already imported.
    """
    package_dir = os.path.join(os.path.abspath(repo_root), PACKAGE)
    if not os.path.isfile(os.path.join(package_dir, "_native", "_winapi.py")):
        raise FileNotFoundError(f"{package_dir} has no _native/_winapi.py: is --repo the repository root?")
    existing = sys.modules.get(PACKAGE)
    if existing is None:
        stub = types.ModuleType(PACKAGE, "stub: only the _native subpackage is imported (tools/wine_smoke)")
        spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [package_dir]
        stub.__spec__ = spec
        stub.__path__ = [package_dir]
        stub.__package__ = PACKAGE
        sys.modules[PACKAGE] = stub
    else:
        where = next(iter(getattr(existing, "__path__", [])), "<not a package>")
        if os.path.normcase(os.path.abspath(where)) != os.path.normcase(package_dir):
            raise ImportError(f"{PACKAGE} is already imported from {where}")
    return importlib.import_module(f"{PACKAGE}._native")


# -- cryptography helpers (pure Python; unit-tested on Linux) --------------------------------------


def public_key_from_blob(ncrypt: types.ModuleType, blob: bytes) -> Any:
    """The ``cryptography`` RSA public key of a BCRYPT_RSAPUBLIC_BLOB, parsed by the wrapper's own parser."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    modulus, exponent = ncrypt.parse_rsa_public_blob(blob)
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def verify_pss(public_key: Any, signature: bytes, message: bytes, salt_length: int = PSS_SALT) -> None:
    """Raise ``cryptography.exceptions.InvalidSignature`` unless ``signature`` is RSASSA-PSS/SHA-256 of
    ``message`` (MGF1-SHA-256, ``salt_length``), which is what NCryptSignHash with BCRYPT_PAD_PSS makes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt_length)
    public_key.verify(signature, message, pss, hashes.SHA256())


def certificate_for(public_key: Any, common_name: str = "msiv2-wine-smoke") -> bytes:
    """DER of a certificate for ``public_key``, issued by a throwaway software key (the CNG key itself
    cannot sign through cryptography's builder; crypt32 does not care who signed it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    issuer_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name + " issuer")]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def unique_key_name(purpose: str) -> str:
    """A key name no other run uses (on real Windows named keys persist until deleted)."""
    return f"msiv2-wine-smoke-{purpose}-{uuid.uuid4().hex[:12]}"


# -- NCrypt ----------------------------------------------------------------------------------------


class NCryptSmoke:
    """Create / set properties / finalize / export / sign / verify / free, for a named and an ephemeral key."""

    def __init__(self, report: Report, nc: types.ModuleType, errors: types.ModuleType, path: str) -> None:
        self.report = report
        self.nc = nc
        self.call_error = errors.NativeCallError
        self.path = path
        self.api: Any = None
        self.public_key: Any = None
        self.key_name: Optional[str] = None

    def run(self) -> None:
        nc, report = self.nc, self.report
        self.api = report.check("ncrypt: load ncrypt.dll, all 10 exports present", lambda: nc.NCrypt(self.path))
        if self.api is None:
            return
        provider = report.check(
            f"ncrypt: NCryptOpenStorageProvider({nc.MS_KEY_STORAGE_PROVIDER!r})",
            self.api.open_storage_provider,
        )
        if provider is None:
            return
        try:
            name = unique_key_name("named")
            if self.key_roundtrip(provider, "named", name):
                self.key_name = name
            self.key_roundtrip(provider, "ephemeral", None)
            self.refusals(provider)
        finally:
            report.check("ncrypt: NCryptFreeObject(provider)", provider.close)

    def key_roundtrip(self, provider: Any, variant: str, name: Optional[str]) -> bool:
        nc, api, report = self.nc, self.api, self.report
        tag = f"ncrypt[{variant}]"
        key = report.check(
            f"{tag}: NCryptCreatePersistedKey(RSA, name={name!r}, flags=0)",
            lambda: api.create_persisted_key(provider, nc.BCRYPT_RSA_ALGORITHM, name, 0),
        )
        if key is None:
            return False
        try:
            if (
                report.check(
                    f"{tag}: NCryptSetProperty(Length={RSA_BITS})",
                    lambda: api.set_dword_property(key, nc.NCRYPT_LENGTH_PROPERTY, RSA_BITS),
                )
                is None
            ):
                return False
            report.check(
                f"{tag}: NCryptSetProperty(Export Policy=0)",
                lambda: api.set_dword_property(key, nc.NCRYPT_EXPORT_POLICY_PROPERTY, 0),
            )
            if report.check(f"{tag}: NCryptFinalizeKey", lambda: api.finalize_key(key)) is None:
                return False
            report.check(
                f"{tag}: NCryptGetProperty(Length) two-pass",
                lambda: self._expect(api.get_dword_property(key, nc.NCRYPT_LENGTH_PROPERTY), RSA_BITS),
                lambda bits: f"{bits} bits",
            )
            blob = report.check(
                f"{tag}: NCryptExportKey(RSAPUBLICBLOB) two-pass",
                lambda: api.export_key(key, nc.BCRYPT_RSAPUBLIC_BLOB),
                lambda data: f"{len(data)} bytes",
            )
            if blob is None:
                return False
            public_key = report.check(
                f"{tag}: parse_rsa_public_blob -> RSA public key",
                lambda: self._checked_public_key(blob),
                lambda k: f"{k.key_size} bits, e={k.public_numbers().e}",
            )
            message = f"wine smoke {variant}".encode()
            signature = report.check(
                f"{tag}: NCryptSignHash(SHA-256 digest, PSS salt {PSS_SALT}) two-pass",
                lambda: api.sign_hash_pss(key, hashlib.sha256(message).digest(), "SHA256", PSS_SALT),
                lambda sig: f"{len(sig)}-byte signature",
            )
            if public_key is None or signature is None:
                return False
            if (
                report.check(
                    f"{tag}: cryptography verifies the PSS signature with the exported key",
                    lambda: verify_pss(public_key, signature, message),
                )
                is None
            ):
                return False
            if variant == "named":
                self.public_key = public_key
            return True
        finally:
            report.check(f"{tag}: NCryptFreeObject(key)", key.close)

    def refusals(self, provider: Any) -> None:
        """What the KeyGuard path needs and Wine does not implement (on Windows these pass)."""
        nc, api, report = self.nc, self.api, self.report
        if self.key_name is not None:
            key = report.expect_refusal(
                f"ncrypt: NCryptOpenKey({self.key_name!r}) of the persisted key",
                lambda: api.open_key(provider, self.key_name),
                "Wine keeps no key storage: named keys are not persisted or opened",
                self.call_error,
            )
            if key not in (None, True):  # real Windows: it was persisted, so remove it again
                report.check("ncrypt: NCryptDeleteKey of the persisted key", lambda: self._delete(key))
        report.expect_refusal(
            "ncrypt: NCryptDeleteKey of a freshly created named key (frees the handle on success)",
            lambda: self._delete(self._create_finalized(provider, unique_key_name("del"), 0)),
            "Wine keeps no key storage",
            self.call_error,
        )
        self._vbs_probe(provider)
        key = report.check(
            "ncrypt: create + finalize a plain ephemeral key for the property probe",
            lambda: self._create_finalized(provider, None, 0),
        )
        if key not in (None, True):
            try:
                report.expect_refusal(
                    'ncrypt: NCryptGetProperty("Virtual Iso") of a plain key',
                    lambda: api.get_property(key, nc.NCRYPT_USE_VIRTUAL_ISOLATION_PROPERTY),
                    "Wine's ncrypt does not know the property",
                    self.call_error,
                )
            finally:
                key.close()

    def _vbs_probe(self, provider: Any) -> None:
        """KeyGuard's creation flags: Wine ignores them (creation succeeds), then has no "Virtual Iso"."""
        nc, report = self.nc, self.report
        flags = nc.NCRYPT_USE_VIRTUAL_ISOLATION_FLAG | nc.NCRYPT_USE_PER_BOOT_KEY_FLAG
        name = "ncrypt: NCryptCreatePersistedKey + FinalizeKey with VIRTUAL_ISOLATION|PER_BOOT flags"
        try:
            key = self._create_finalized(provider, unique_key_name("vbs"), flags)
        except self.call_error as exc:
            report.record(XFAIL, name, f"{describe_exception(exc)} [no VBS key isolation here]")
            return
        except Exception as exc:
            report.record(FAIL, name, describe_exception(exc))
            return
        try:
            report.record(INFO, name, "created: the flags were accepted (Wine ignores them)")
            report.expect_refusal(
                'ncrypt: NCryptGetProperty("Virtual Iso") of that key is non-zero',
                lambda: self._nonzero_isolation(key),
                "no VBS / KeyGuard under Wine",
                self.call_error,
            )
        finally:
            with contextlib.suppress(self.call_error):  # Wine: nothing persisted; _delete freed the handle
                self._delete(key)

    def _create_finalized(self, provider: Any, name: Optional[str], flags: int) -> Any:
        key = self.api.create_persisted_key(provider, self.nc.BCRYPT_RSA_ALGORITHM, name, flags)
        try:
            self.api.set_dword_property(key, self.nc.NCRYPT_LENGTH_PROPERTY, RSA_BITS)
            self.api.finalize_key(key)
        except BaseException:
            key.close()
            raise
        return key

    def _nonzero_isolation(self, key: Any) -> bytes:
        value = self.api.get_property(key, self.nc.NCRYPT_USE_VIRTUAL_ISOLATION_PROPERTY)
        if not any(value):
            raise self.call_error("NCryptGetProperty", self.nc.NTE_NOT_SUPPORTED, {})
        return bytes(value)

    def _delete(self, key: Any) -> str:
        """NCryptDeleteKey (it frees the handle on success); the handle is freed on failure too."""
        try:
            self.api.delete_key(key)
        finally:
            key.close()  # a no-op once delete_key succeeded
        return "deleted"

    def _checked_public_key(self, blob: bytes) -> Any:
        key = public_key_from_blob(self.nc, blob)
        self._expect(key.key_size, RSA_BITS)
        self._expect(key.public_numbers().e, 65537)
        return key

    @staticmethod
    def _expect(value: Any, wanted: Any) -> Any:
        if value != wanted:
            raise AssertionError(f"got {value!r}, expected {wanted!r}")
        return value


# -- Crypt32 ---------------------------------------------------------------------------------------


def crypt32_smoke(report: Report, c32: types.ModuleType, path: str, der: bytes, key_name: str) -> Any:
    """Create a context from DER, read properties two-pass, attach the key by name, read it back, free.
    Returns an open context for the WinHTTP checks (the caller closes it), or None."""
    context = report.check("crypt32: CertCreateCertificateContext(DER)", lambda: c32.CertContext.from_der(path, der))
    if context is None:
        return None
    report.check(
        "crypt32: CERT_CONTEXT.pbCertEncoded/cbCertEncoded read back",
        lambda: _expect_equal(context.der, der),
        lambda d: f"{len(d)} bytes, identical",
    )
    report.check(
        "crypt32: CERT_CONTEXT.pCertInfo -> CERT_INFO.dwVersion (offset of pCertInfo)",
        lambda: _expect_equal(int(c32.ffi.cast("uint32_t *", context.ptr.pCertInfo)[0]), 2),
        lambda version: f"CERT_V{version + 1}",
    )
    report.note(
        "crypt32: CERT_CONTEXT.hCertStore of a CertCreateCertificateContext context",
        lambda: "NULL" if context.ptr.hCertStore == c32.ffi.NULL else "non-NULL (a store of its own)",
    )
    sha1 = hashlib.sha1(der).digest()  # noqa: S324 - CERT_SHA1_HASH_PROP_ID is SHA-1 by definition
    report.check(
        "crypt32: CertGetCertificateContextProperty(CERT_SHA1_HASH_PROP_ID) two-pass",
        lambda: _expect_equal(context.get_property(3), sha1),
        lambda value: f"{len(value)} bytes = SHA-1 of the DER",
    )
    report.check(
        "crypt32: CERT_KEY_PROV_INFO_PROP_ID absent before binding (CRYPT_E_NOT_FOUND via GetLastError)",
        lambda: _expect_equal(context.key_provider_info(), None),
        lambda _: "None",
    )
    bound = report.check(
        "crypt32: bind_key_provider_info (CertSetCertificateContextProperty, CRYPT_KEY_PROV_INFO)",
        lambda: context.bind_key_provider_info("Microsoft Software Key Storage Provider", key_name),
    )
    if bound is not None:
        wanted = c32.KeyProvInfo(
            container_name=key_name,
            provider_name="Microsoft Software Key Storage Provider",
            provider_type=c32.KEY_PROV_TYPE_CNG,
            flags=c32.NCRYPT_SILENT_FLAG,
            key_spec=c32.KEY_SPEC_NONE,
            param_count=0,
        )
        report.check(
            "crypt32: key_provider_info read back two-pass (CRYPT_KEY_PROV_INFO layout)",
            lambda: _expect_equal(context.key_provider_info(), wanted),
            lambda info: f"container={info.container_name!r} type={info.provider_type} flags=0x{info.flags:X}",
        )
    report.check(
        "crypt32: CERT_NCRYPT_KEY_HANDLE_PROP_ID (78) stays absent",
        lambda: _expect_equal(context.ncrypt_key_handle(), None),
        lambda _: "None",
    )
    report.check(
        "crypt32: CertEnumCertificatesInStore over the context's store",
        context.store_certificates,
        lambda found: f"{len(found)} certificate(s)",
    )

    def duplicate_and_free() -> str:
        copy = c32.CertContext.adopt(path, context._lib.CertDuplicateCertificateContext(context.ptr))
        try:
            _expect_equal(copy.der, der)
        finally:
            copy.close()
        _expect_equal(context.der, der)
        return "duplicate freed, original still usable"

    report.check(
        "crypt32: CertDuplicateCertificateContext + CertFreeCertificateContext",
        duplicate_and_free,
        str,
    )
    return context


def _expect_equal(value: Any, wanted: Any) -> Any:
    if value != wanted:
        raise AssertionError(f"got {value!r}, expected {wanted!r}")
    return value


# -- WinHTTP ---------------------------------------------------------------------------------------


def winhttp_smoke(report: Report, wh: types.ModuleType, paths: Any, cert: Any, tls: Optional[Any]) -> None:
    """Session / connection / request handles, options, the status callback (its sentinel, the shared cffi
    trampoline, ``dwContext`` routing), a plain-HTTP exchange and, with ``tls`` (a server ``SSLContext`` and
    its certificate's DER), HTTPS exchanges -- all against loopback servers in this process (127.0.0.1 only).
    """
    report.check(
        "winhttp: WINHTTP_INVALID_STATUS_CALLBACK sentinel for this pointer size",
        lambda: _expect_equal(wh._INVALID_STATUS_CALLBACK, (1 << (8 * struct.calcsize("P"))) - 1),
        lambda v: f"0x{v:X}",
    )
    for label, kwargs in (("no proxy", {"direct": True}), ("automatic proxy", {})):
        session = report.check(
            f"winhttp: WinHttpOpen ({label})", lambda kw=kwargs: wh.Session.open(paths.winhttp, "msiv2-smoke", **kw)
        )
        if session is not None:
            report.check(f"winhttp: WinHttpCloseHandle(session, {label})", session.close)

    session = report.check(
        "winhttp: WinHttpOpen + WinHttpSetTimeouts for the loopback exchanges",
        lambda: _timed_session(wh, paths.winhttp),
    )
    if session is None:
        return
    try:
        with _LoopbackHttpServer() as server:
            _plain_http_checks(report, wh, session, server)
        if tls is not None:
            with _LoopbackHttpServer(tls[0]) as server:
                _https_checks(report, wh, session, server, crypt32_path=paths.crypt32, cert=cert, server_der=tls[1])
    finally:
        report.check("winhttp: WinHttpCloseHandle(session)", session.close)
        report.check(
            "winhttp: no status callback left registered", lambda: _expect_equal(wh._status_dispatch.registered(), 0)
        )


def _timed_session(wh: types.ModuleType, path: str) -> Any:
    session = wh.Session.open(path, "msiv2-smoke", direct=True)
    try:
        session.set_timeouts(5000, 5000, 5000, 5000)
    except BaseException:
        session.close()
        raise
    return session


def _plain_http_checks(report: Report, wh: types.ModuleType, session: Any, server: _LoopbackHttpServer) -> None:
    connection = report.check(
        f"winhttp: WinHttpConnect(127.0.0.1:{server.port}) (plain HTTP)",
        lambda: session.connect("127.0.0.1", server.port),
    )
    if connection is None:
        return
    try:
        request = report.check(
            "winhttp: WinHttpOpenRequest(GET /hello?x=1, plain HTTP)",
            lambda: connection.open_request("GET", "/hello?x=1", secure=False),
        )
        if request is None:
            return
        seen: list[int] = []
        try:
            report.check(
                "winhttp: WinHttpSetOption(DISABLE_FEATURE, cookies|redirects|authentication)",
                lambda: request.set_dword_option(
                    wh.WINHTTP_OPTION_DISABLE_FEATURE,
                    wh.WINHTTP_DISABLE_COOKIES | wh.WINHTTP_DISABLE_REDIRECTS | wh.WINHTTP_DISABLE_AUTHENTICATION,
                ),
            )
            report.check(
                "winhttp: WinHttpSetStatusCallback (shared trampoline; previous is not the invalid sentinel)",
                lambda: request.set_status_callback(
                    lambda _h, _ctx, status, _info, _len: seen.append(status),
                    wh.WINHTTP_CALLBACK_STATUS_SENDING_REQUEST | wh.WINHTTP_CALLBACK_STATUS_SECURE_FAILURE,
                ),
            )
            report.check("winhttp: WinHttpAddRequestHeaders", lambda: request.add_headers("X-Smoke: wine"))
            sent = report.check(
                "winhttp: WinHttpSendRequest(headers, 4-byte body) + WinHttpReceiveResponse",
                lambda: (request.send("X-Second: 2", b"body"), request.receive_response()),
            )
            if sent is None:
                return
            report.check(
                "winhttp: status callback ran through the cffi trampoline with our dwContext",
                lambda: _expect_equal(sorted(set(seen)), [wh.WINHTTP_CALLBACK_STATUS_SENDING_REQUEST]),
                lambda statuses: f"statuses {[hex(s) for s in statuses]}",
            )
            _response_checks(report, wh, request, "/hello?x=1 X-Second=2 body=4")
        finally:
            report.check("winhttp: WinHttpCloseHandle(request)", request.close)
    finally:
        report.check("winhttp: WinHttpCloseHandle(connection)", connection.close)


def _response_checks(report: Report, wh: types.ModuleType, request: Any, echo: str, tag: str = "") -> None:
    report.check(
        f"winhttp{tag}: WinHttpQueryHeaders(STATUS_CODE | FLAG_NUMBER)",
        lambda: _expect_equal(request.query_status_code(), 200),
        str,
    )
    report.check(
        f"winhttp{tag}: WinHttpQueryHeaders(STATUS_TEXT) two-pass",
        lambda: _expect_equal(request.query_header_text(wh.WINHTTP_QUERY_STATUS_TEXT), "OK"),
        repr,
    )
    report.check(
        f"winhttp{tag}: WinHttpQueryHeaders(RAW_HEADERS_CRLF) two-pass",
        lambda: _contains(request.query_header_text(wh.WINHTTP_QUERY_RAW_HEADERS_CRLF), "X-Echo: wine"),
        lambda text: f"{len(text)} chars",
    )
    body = f"hello from loopback {echo}".encode()
    report.check(
        f"winhttp{tag}: WinHttpQueryDataAvailable + WinHttpReadData",
        lambda: _expect_equal(_read_body(wh, request), body),
        lambda data: f"{len(data)} bytes",
    )


def _https_checks(
    report: Report,
    wh: types.ModuleType,
    session: Any,
    server: _LoopbackHttpServer,
    *,
    crypt32_path: str,
    cert: Any,
    server_der: bytes,
) -> None:
    connection = report.check(
        f"winhttps: WinHttpConnect(localhost:{server.port}) (TLS, self-signed server certificate)",
        lambda: session.connect("localhost", server.port),
    )
    if connection is None:
        return
    try:
        _https_untrusted(report, wh, connection, server)
        _https_checked_by_callback(report, wh, connection, server, crypt32_path=crypt32_path, server_der=server_der)
        _https_cancel_from_callback(report, wh, connection, server)
        if cert is not None:
            _https_client_certificate(report, wh, connection, cert, wh.WinHttpError)
    finally:
        report.check("winhttps: WinHttpCloseHandle(connection)", connection.close)


def _https_untrusted(report: Report, wh: types.ModuleType, connection: Any, server: _LoopbackHttpServer) -> None:
    """No ignore flags: WinHTTP must refuse the unknown root before sending anything."""
    flags: list[int] = []

    def on_status(_h: Any, _ctx: int, status: int, info: Any, _len: int) -> None:
        if status == wh.WINHTTP_CALLBACK_STATUS_SECURE_FAILURE:
            flags.append(wh.read_dword(info))

    def attempt() -> str:
        with connection.open_request("GET", "/untrusted") as request:
            request.set_status_callback(on_status, wh.WINHTTP_CALLBACK_STATUS_SECURE_FAILURE)
            try:
                request.send("", None)
            except wh.WinHttpError as exc:
                if not exc.is_secure_failure():
                    raise
                combined = 0
                for value in flags:
                    combined |= value
                why = wh.secure_failure_reason(combined) if combined else "no SECURE_FAILURE callback"
                return f"{exc.name} ({exc.code}); {why}"
            raise AssertionError("WinHttpSendRequest accepted an untrusted self-signed server")

    report.check("winhttps: unknown root refused (a secure-failure WinHttpError)", attempt, str)
    report.check(
        "winhttps: nothing was sent to the refused server",
        lambda: _expect_equal(server.requests_for("/untrusted"), 0),
        lambda _: "0 requests",
    )


def _https_client_certificate(
    report: Report, wh: types.ModuleType, connection: Any, cert: Any, refusal: type[BaseException]
) -> None:
    """The client certificate whose key is named by CERT_KEY_PROV_INFO: Schannel must open that key."""

    def attempt() -> int:
        with connection.open_request("GET", "/client-cert") as request:
            request.set_client_certificate(cert)
            request.set_dword_option(wh.WINHTTP_OPTION_SECURITY_FLAGS, wh.SECURITY_FLAG_IGNORE_UNKNOWN_CA)
            request.send("", None)
            request.receive_response()
            return int(request.query_status_code())

    report.expect_refusal(
        "winhttps: GET with the client certificate (key named by CERT_KEY_PROV_INFO)",
        attempt,
        "Wine's Schannel cannot open a CNG key by name (NCryptOpenKey is not implemented)",
        refusal,
    )


def _https_checked_by_callback(
    report: Report,
    wh: types.ModuleType,
    connection: Any,
    server: _LoopbackHttpServer,
    *,
    crypt32_path: str,
    server_der: bytes,
) -> None:
    """What the transport does with a CA bundle: read the server chain in the SENDING_REQUEST callback
    (WINHTTP_OPTION_SERVER_CERT_CONTEXT -> CertContext.adopt -> CertEnumCertificatesInStore), then accept an
    unknown root."""
    seen: dict[str, Any] = {}

    def on_status(_h: Any, _ctx: int, status: int, _info: Any, _len: int) -> None:
        if status != wh.WINHTTP_CALLBACK_STATUS_SENDING_REQUEST:
            return
        try:
            with request.server_certificate(crypt32_path) as server_cert:
                seen["leaf"] = server_cert.der
                seen["store"] = server_cert.store_certificates()
        except Exception as exc:
            seen["error"] = describe_exception(exc)

    request = report.check(
        "winhttps: WinHttpOpenRequest(GET /checked, WINHTTP_FLAG_SECURE)",
        lambda: connection.open_request("GET", "/checked"),
    )
    if request is None:
        return
    try:
        report.check("winhttps: WinHttpAddRequestHeaders", lambda: request.add_headers("X-Smoke: wine"))
        report.check(
            "winhttps: WinHttpSetStatusCallback(SENDING_REQUEST | SECURE_FAILURE)",
            lambda: request.set_status_callback(
                on_status, wh.WINHTTP_CALLBACK_STATUS_SENDING_REQUEST | wh.WINHTTP_CALLBACK_STATUS_SECURE_FAILURE
            ),
        )
        report.check(
            "winhttps: WinHttpSetOption(SECURITY_FLAGS, IGNORE_UNKNOWN_CA)",
            lambda: request.set_dword_option(wh.WINHTTP_OPTION_SECURITY_FLAGS, wh.SECURITY_FLAG_IGNORE_UNKNOWN_CA),
        )
        sent = report.check(
            "winhttps: WinHttpSendRequest + WinHttpReceiveResponse over TLS",
            lambda: (request.send("X-Second: 3", b"tls"), request.receive_response()),
        )
        report.check(
            "winhttps: SERVER_CERT_CONTEXT in the SENDING_REQUEST callback: leaf DER",
            lambda: _expect_equal(seen.get("error") or seen.get("leaf"), server_der),
            lambda der: f"{len(der)} bytes = the server's certificate",
        )
        report.check(
            "winhttps: CertEnumCertificatesInStore(hCertStore of the server context) holds the leaf",
            lambda: _contains_item(seen.get("error") or seen.get("store"), server_der),
            lambda store: f"{len(store)} certificate(s) in the store",
        )
        if sent is not None:
            _response_checks(report, wh, request, "/checked X-Second=3 body=3", tag="s")
    finally:
        report.check("winhttps: WinHttpCloseHandle(request)", request.close)


def _https_cancel_from_callback(
    report: Report, wh: types.ModuleType, connection: Any, server: _LoopbackHttpServer
) -> None:
    """The transport's rejection: close the request handle inside SENDING_REQUEST. Reported as INFO (what
    Wine does is a hint, not proof, of what Windows does)."""
    outcome: dict[str, Any] = {}

    def attempt() -> str:
        request = connection.open_request("GET", "/cancelled")

        def on_status(_h: Any, _ctx: int, status: int, _info: Any, _len: int) -> None:
            if status == wh.WINHTTP_CALLBACK_STATUS_SENDING_REQUEST:
                outcome["closed_in_callback"] = True
                request.close()

        try:
            request.set_status_callback(on_status, wh.WINHTTP_CALLBACK_STATUS_SENDING_REQUEST)
            request.set_dword_option(wh.WINHTTP_OPTION_SECURITY_FLAGS, wh.SECURITY_FLAG_IGNORE_UNKNOWN_CA)
            try:
                request.send("", None)
                outcome["send"] = "WinHttpSendRequest returned TRUE"
            except wh.WinHttpError as exc:
                outcome["send"] = f"WinHttpSendRequest failed with {exc.name}"
            except Exception as exc:  # the wrapper refuses a closed handle
                outcome["send"] = f"WinHttpSendRequest not reached: {describe_exception(exc)}"
        finally:
            request.close()
        delivered = server.wait_for("/cancelled")
        ran = "closed in the callback" if outcome.get("closed_in_callback") else "the callback never ran"
        return f"{ran}; {outcome['send']}; requests that reached the server: {delivered}"

    report.note("winhttps: close the request inside SENDING_REQUEST (the transport's cancel)", attempt)


def _contains(text: str, needle: str) -> str:
    if needle not in text:
        raise AssertionError(f"{needle!r} not in {text!r}")
    return text


def _contains_item(items: Any, wanted: Any) -> Any:
    if not isinstance(items, list) or wanted not in items:
        raise AssertionError(f"{wanted!r:.40} not in {items!r:.200}")
    return items


def _read_body(wh: types.ModuleType, request: Any) -> bytes:
    ffi = wh.ffi
    body = b""
    while True:
        available = request.query_data_available()
        if not available:
            return body
        buf = ffi.new("uint8_t[]", available)
        count = request.read_into(buf, available)
        if not count:
            return body
        body += bytes(ffi.buffer(buf, count))


def tls_server_material(directory: str) -> tuple[Any, bytes]:
    """A server ``SSLContext`` with a fresh self-signed certificate for 127.0.0.1, and that certificate's DER."""
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file = os.path.join(directory, "server.pem")
    key_file = os.path.join(directory, "server.key")
    with open(cert_file, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert.public_bytes(serialization.Encoding.DER)


class _LoopbackHttpServer:
    """A sequential HTTP/1.1 responder on 127.0.0.1 (optionally TLS) that echoes what it received and
    records every request target it saw. No http.server: each answer closes its connection."""

    def __init__(self, tls: Any = None) -> None:
        self._tls = tls
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.targets: list[str] = []
        self._busy = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _LoopbackHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):  # wake the blocked accept(): closing the socket does not, on Linux
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        self._thread.join(5)
        self.sock.close()

    def requests_for(self, path: str) -> int:
        return sum(1 for target in self.targets if target.split("?")[0] == path)

    def wait_for(self, path: str, seconds: float = 2.0) -> int:
        """``requests_for(path)`` once it is non-zero, or after ``seconds`` (a request WinHTTP wrote may still
        be on its way through the accept loop)."""
        deadline = time.monotonic() + seconds
        while not self.requests_for(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._busy:  # not in the middle of an answer
            return self.requests_for(path)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self._stopping:
                conn.close()
                return
            with self._busy:
                try:
                    conn.settimeout(10)
                    if self._tls is not None:
                        conn = self._tls.wrap_socket(conn, server_side=True)
                    with conn:
                        self._answer(conn)
                except OSError:  # includes ssl.SSLError: the client refused our certificate
                    conn.close()

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        parts = lines[0].split(" ")
        target = parts[1] if len(parts) > 1 else "?"
        self.targets.append(target)
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = conn.recv(4096)
            if not chunk:
                break
            rest += chunk
        body = f"hello from loopback {target} X-Second={headers.get('x-second')} body={len(rest)}".encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Echo: "
            + headers.get("x-smoke", "").encode()
            + b"\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


# -- main ------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="repository root (holds azure_msiv2_credential/)")
    args = parser.parse_args(argv)

    report = Report()
    wine = _wine_version()
    print(
        f"wine smoke: CPython {platform.python_version()} {os.environ.get('PROCESSOR_ARCHITECTURE', '?')}"
        f" on {sys.platform} ({struct.calcsize('P') * 8}-bit), Wine {wine or 'not detected'}",
        flush=True,
    )
    native = report.check(
        "import azure_msiv2_credential._native (stub package, no __init__)", lambda: import_native(args.repo)
    )
    if native is None:
        return 1
    import cffi  # noqa: F401 - the version line below documents what ran
    import cryptography

    from azure_msiv2_credential._native import _errors, crypt32, ncrypt, winhttp

    print(f"wine smoke: cffi {sys.modules['cffi'].__version__}, cryptography {cryptography.__version__}", flush=True)
    libs = report.check(
        "NativeLibraries.for_this_host()",
        native.NativeLibraries.for_this_host,
        lambda lib: f"ncrypt={lib.ncrypt} crypt32={lib.crypt32} winhttp={lib.winhttp}",
    )
    if libs is None:
        return 1

    nsmoke = NCryptSmoke(report, ncrypt, _errors, libs.ncrypt)
    nsmoke.run()

    context = None
    if nsmoke.public_key is not None:
        der = certificate_for(nsmoke.public_key)
        context = crypt32_smoke(report, crypt32, libs.crypt32, der, nsmoke.key_name or "msiv2-wine-smoke")
    else:
        report.record(FAIL, "crypt32: skipped, NCrypt produced no public key")
    tls = None
    with tempfile.TemporaryDirectory(prefix="msiv2-smoke-") as scratch:
        tls = report.check(
            "ssl: loopback TLS server context (self-signed, localhost)",
            lambda: tls_server_material(scratch),
        )
    try:
        winhttp_smoke(report, winhttp, libs, context, tls)
    finally:
        if context is not None:
            report.check("crypt32: CertFreeCertificateContext (our reference)", context.close)

    print(f"wine smoke: {report.summary()}", flush=True)
    return report.exit_status()


def _wine_version() -> Optional[str]:
    """Wine's version from ntdll's ``wine_get_version`` export (None on real Windows)."""
    if sys.platform != "win32":
        return None
    try:
        import ctypes

        getter = ctypes.WinDLL("ntdll").wine_get_version
    except (OSError, AttributeError):
        return None
    getter.restype = ctypes.c_char_p
    return str(getter().decode())


if __name__ == "__main__":
    sys.exit(main())
