"""Library loading: absolute paths only, cached per path, host defaults, and the shipped generated module."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from azure_msiv2_credential._native import NativeLibraries, NativeLibraryError, _loader, load

from ._fakes import FakeWin

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", ["ncrypt.dll", "libfakewin.so", "./libfakewin.so", "build/libfakewin.so", ""])
def test_relative_paths_are_refused(path: str) -> None:
    with pytest.raises(NativeLibraryError, match="absolute path only"):
        load(path)


def test_relative_path_is_refused_even_if_it_exists(fakewin: FakeWin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(fakewin.fakewin_path.parent)
    with pytest.raises(NativeLibraryError, match="absolute path only"):
        load(fakewin.fakewin_path.name)


def test_missing_and_unloadable(tmp_path: Path) -> None:
    with pytest.raises(NativeLibraryError, match="does not exist"):
        load(str(tmp_path / "nope.so"))
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a shared object")
    with pytest.raises(NativeLibraryError, match="could not be loaded"):
        load(str(junk))


def test_absolute_path_loads_once(fakewin: FakeWin) -> None:
    assert load(str(fakewin.fakewin_path)) is load(str(fakewin.fakewin_path))


@pytest.mark.skipif(sys.platform == "win32", reason="off-Windows behaviour")
def test_for_this_host_off_windows() -> None:
    with pytest.raises(NativeLibraryError, match="only on Windows"):
        NativeLibraries.for_this_host()


def test_for_this_host_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Windows branch, simulated: System32 from SystemRoot; attestation arg > env > package folder."""
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("SYSTEMROOT", "D:\\Win")
    monkeypatch.delenv(_loader.ATTESTATION_ENV, raising=False)
    libs = NativeLibraries.for_this_host()
    assert libs.ncrypt == "D:\\Win\\System32\\ncrypt.dll"
    assert libs.crypt32 == "D:\\Win\\System32\\crypt32.dll"
    assert libs.winhttp == "D:\\Win\\System32\\winhttp.dll"
    assert libs.attestation is None  # not shipped in the package folder
    monkeypatch.setenv(_loader.ATTESTATION_ENV, "C:\\attest\\AttestationClientLib.dll")
    assert NativeLibraries.for_this_host().attestation == "C:\\attest\\AttestationClientLib.dll"
    assert NativeLibraries.for_this_host("E:\\x.dll").attestation == "E:\\x.dll"
    monkeypatch.setenv("SYSTEMROOT", "relative")
    assert NativeLibraries.for_this_host().ncrypt == "C:\\Windows\\System32\\ncrypt.dll"


def test_shipped_winapi_matches_the_cdefs(tmp_path: Path) -> None:
    """``_winapi.py`` is committed; regenerating it from cffi_build/*.h must give the same bytes."""
    build = runpy.run_path(str(ROOT / "cffi_build" / "build.py"))
    out = tmp_path / "_winapi.py"
    build["ffibuilder"].emit_python_code(str(out))
    shipped = ROOT / "azure_msiv2_credential" / "_native" / "_winapi.py"
    assert out.read_text() == shipped.read_text(), "run `python cffi_build/build.py` and commit _winapi.py"
