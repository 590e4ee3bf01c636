/* Windows typedefs and the internals shared by the Linux stand-ins for ncrypt.dll, crypt32.dll,
 * winhttp.dll and AttestationClientLib.dll.
 *
 * The fakes are built by tests/native/_fakes.py:
 *   libfakewin.so    = fakewin_common.c + every fake_*.c except fake_attestation.c
 *   libfakeattest.so = fake_attestation.c, linked against libfakewin.so
 *
 * Python control functions: put their C prototypes between the markers
 *   BEGIN PYTHON CDEF  ...  END PYTHON CDEF
 * inside a comment of any fake_*.c; the harness feeds them to cffi and exposes them as
 * `fakewin.ctl.<name>`. Every declared function named `Fake*_Reset` is called by `fakewin.reset()`.
 */
#ifndef FAKEWIN_H
#define FAKEWIN_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

/* On Linux x86-64 there is one calling convention; the bindings declare WINAPI, which cffi ignores here. */
#define WINAPI
#define FAKEWIN_EXPORT __attribute__((visibility("default")))

/* ---- Windows base types, LLP64 sizes (DWORD/LONG are 32-bit everywhere) ---- */
typedef uint16_t WCHAR;
typedef WCHAR *LPWSTR;
typedef const WCHAR *LPCWSTR;
typedef char *LPSTR;
typedef const char *LPCSTR;
typedef uint8_t BYTE;
typedef BYTE *PBYTE;
typedef uint16_t WORD;
typedef uint32_t DWORD;
typedef uint32_t ULONG;
typedef DWORD *PDWORD;
typedef int32_t LONG;
typedef int32_t SECURITY_STATUS;
typedef int32_t NTSTATUS;
typedef int32_t HRESULT;
typedef int BOOL;
typedef uintptr_t ULONG_PTR;
typedef uintptr_t DWORD_PTR;
typedef void *PVOID;
typedef void *LPVOID;
typedef void *HANDLE;
typedef void *HINTERNET;
typedef uint16_t INTERNET_PORT;
typedef ULONG_PTR NCRYPT_HANDLE;
typedef ULONG_PTR NCRYPT_PROV_HANDLE;
typedef ULONG_PTR NCRYPT_KEY_HANDLE;

#ifndef TRUE
#define TRUE 1
#define FALSE 0
#endif

#define ERROR_SUCCESS 0

/* ---- NTE_* status codes (winerror.h) ---- */
#define NTE_BAD_DATA          ((SECURITY_STATUS)0x80090005)
#define NTE_BAD_KEY           ((SECURITY_STATUS)0x80090003)
#define NTE_BAD_SIGNATURE     ((SECURITY_STATUS)0x80090006)
#define NTE_PERM              ((SECURITY_STATUS)0x80090010)
#define NTE_NOT_FOUND         ((SECURITY_STATUS)0x80090011)
#define NTE_BAD_TYPE          ((SECURITY_STATUS)0x8009000A)
#define NTE_BAD_KEY_STATE     ((SECURITY_STATUS)0x8009000B)
#define NTE_BAD_PROVIDER      ((SECURITY_STATUS)0x80090013)
#define NTE_EXISTS            ((SECURITY_STATUS)0x8009000F)
#define NTE_NO_MEMORY         ((SECURITY_STATUS)0x8009000E)
#define NTE_BAD_KEYSET        ((SECURITY_STATUS)0x80090016)
#define NTE_BAD_FLAGS         ((SECURITY_STATUS)0x80090009)
#define NTE_INVALID_HANDLE    ((SECURITY_STATUS)0x80090026)
#define NTE_INVALID_PARAMETER ((SECURITY_STATUS)0x80090027)
#define NTE_BUFFER_TOO_SMALL  ((SECURITY_STATUS)0x80090028)
#define NTE_NOT_SUPPORTED     ((SECURITY_STATUS)0x80090029)
#define NTE_INTERNAL_ERROR    ((SECURITY_STATUS)0x8009002D)

/* ---- last error: thread-local, mirrored into errno so cffi's ffi.errno sees it on Linux ---- */
FAKEWIN_EXPORT void WINAPI SetLastError(DWORD code);
FAKEWIN_EXPORT DWORD WINAPI GetLastError(void);

/* ---- UTF-16 helpers (BMP + surrogate pairs) ---- */
size_t fakewin_wcslen(LPCWSTR s);
/* 1 if the wide string equals the ASCII/UTF-8 string `s`; NULL never equals. */
int fakewin_wcs_eq(LPCWSTR w, const char *s);
/* malloc'd UTF-8 copy (free() it); NULL in -> NULL out. */
char *fakewin_wcs_to_utf8(LPCWSTR w);
/* malloc'd UTF-16 copy (free() it); NULL in -> NULL out. */
WCHAR *fakewin_utf8_to_wcs(const char *s);

/* ---- live-handle registry, for leak checks ---- */
/* Register a live handle of a kind ("ncrypt.key", "crypt32.cert", "winhttp.request", ...). `kind` is stored
 * by pointer and compared with strcmp: pass a string literal. */
void fakewin_handle_add(const char *kind, const void *h);
/* 0 = was live and is now removed, -1 = unknown or already freed (double free). */
int fakewin_handle_remove(const char *kind, const void *h);
/* 1 if `h` is a live handle of `kind`. */
int fakewin_handle_live(const char *kind, const void *h);
/* Number of live handles of every kind. */
FAKEWIN_EXPORT int FakeWin_LiveHandles(void);
/* Number of live handles of one kind (NULL = all). */
FAKEWIN_EXPORT int FakeWin_LiveHandlesOfKind(const char *kind);
/* Number of double frees / frees of unknown handles seen so far (a binding bug if non-zero). */
FAKEWIN_EXPORT int FakeWin_BadFrees(void);

/* ---- from fake_ncrypt.c ---- */
/* Borrowed EVP_PKEY of a live fake NCrypt key handle; NULL if the handle is not live, the key is not
 * finalized, or it is stale (after FakeNCrypt_Reboot). Never free it. */
EVP_PKEY *fakewin_ncrypt_pkey(NCRYPT_KEY_HANDLE key);

#endif /* FAKEWIN_H */
