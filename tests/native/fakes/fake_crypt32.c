/* Linux stand-in for the crypt32.dll subset the bindings use.
 *
 * Semantics kept from Windows:
 * - A PCCERT_CONTEXT is reference counted: CertDuplicateCertificateContext returns the same pointer
 *   with one more reference; CertFreeCertificateContext drops one; the last drop frees it.
 * - CERT_NCRYPT_KEY_HANDLE_PROP_ID (78) TAKES OWNERSHIP of the NCRYPT_KEY_HANDLE, as Windows does (.NET's
 *   CopyWithEphemeralKey: the call "transfers ownership of the handle to the certificate"; the key context is
 *   "implicitly released on the final freeing of the CERT_CONTEXT" unless CERT_STORE_NO_CRYPT_RELEASE_FLAG):
 *   the handle is freed (NCryptFreeObject) on the context's last free, when the property is replaced and
 *   when it is set to NULL. With CERT_STORE_NO_CRYPT_RELEASE_FLAG in dwFlags the handle stays the caller's.
 *   FakeCrypt32_Prop78Sets counts the sets, so tests can prove a binding never attaches a handle.
 * - CERT_KEY_PROV_INFO_PROP_ID (2) stores a deep copy of the CRYPT_KEY_PROV_INFO (structure, params,
 *   strings), freed with the context or when replaced / deleted (pvData NULL); each copy is a live
 *   handle of kind "crypt32.keyprovinfo", so a copy that outlives its context shows up as a leak. Read
 *   back, the structure comes first in the caller's buffer with its strings and params after it and the
 *   pointers pointing there ("structures pointed to by members ... are returned following the base
 *   structure"). With dwProvType 0 (a CNG provider), cProvParam must be 0 and rgProvParam NULL.
 * - Property reads are two-pass: NULL buffer or a short one -> *pcbData = size needed,
 *   ERROR_MORE_DATA for a short buffer; a missing property -> CRYPT_E_NOT_FOUND.
 * - Finding the private key for Schannel (fakewin_cert_acquire_key, CryptAcquireCertificatePrivateKey's
 *   order): property 78's handle if set, else the key named by property 2, opened through the fake NCrypt
 *   with the structure's dwKeySpec as dwLegacyKeySpec and its flags.
 * - A context may live in a store (hCertStore); CertEnumCertificatesInStore frees the previous
 *   context it is given and returns a new reference the caller frees.
 * Every context is a live handle of kind "crypt32.cert" for the leak checks.
 *
 * BEGIN PYTHON CDEF
 * int FakeCrypt32_Reset(void);
 * int FakeCrypt32_RefCount(const void *ctx);
 * int FakeCrypt32_Prop78Sets(void);
 * END PYTHON CDEF
 */
#define _GNU_SOURCE /* asprintf */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fake_crypt32.h"

#define ERROR_MORE_DATA 234
#define ERROR_INVALID_PARAMETER 87
#define E_INVALIDARG ((DWORD)0x80070057)
#define CRYPT_E_NOT_FOUND ((DWORD)0x80092004)
#define CRYPT_E_ASN1_BADTAG ((DWORD)0x8009310B)

#define X509_ASN_ENCODING 0x00000001
#define PKCS_7_ASN_ENCODING 0x00010000
#define CERT_KEY_PROV_INFO_PROP_ID 2
#define CERT_NCRYPT_KEY_HANDLE_PROP_ID 78
#define CERT_SET_KEY_CONTEXT_PROP_ID 0x1
#define CERT_STORE_NO_CRYPT_RELEASE_FLAG 0x1

static const char *const KIND_CERT = "crypt32.cert";
static const char *const KIND_PROV_INFO = "crypt32.keyprovinfo";
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_prop78_sets;

static BOOL fail(DWORD code) {
    SetLastError(code);
    return FALSE;
}

static void store_release_locked(fake_cert_store *store) {
    if (store == NULL || --store->refs > 0) return;
    for (size_t i = 0; i < store->count; i++) free(store->der[i]);
    free(store->der);
    free(store->der_len);
    free(store);
}

/* A new context (one reference) over a copy of `der`; `store` (may be NULL) gains a reference. */
static fake_cert_context *context_new(const BYTE *der, DWORD len, fake_cert_store *store, size_t index) {
    fake_cert_context *ctx = calloc(1, sizeof *ctx);
    BYTE *copy = malloc(len ? len : 1);
    if (ctx == NULL || copy == NULL) {
        free(ctx);
        free(copy);
        return NULL;
    }
    memcpy(copy, der, len);
    ctx->pub.dwCertEncodingType = X509_ASN_ENCODING | PKCS_7_ASN_ENCODING;
    ctx->pub.pbCertEncoded = copy;
    ctx->pub.cbCertEncoded = len;
    ctx->pub.pCertInfo = NULL;
    ctx->pub.hCertStore = store;
    ctx->refs = 1;
    ctx->store_index = index;
    if (store != NULL) {
        pthread_mutex_lock(&g_lock);
        store->refs++;
        pthread_mutex_unlock(&g_lock);
    }
    fakewin_handle_add(KIND_CERT, ctx);
    return ctx;
}

/* A DER blob is accepted when it holds exactly one DER SEQUENCE (what Windows' decoder insists on). */
static int looks_like_der_certificate(const BYTE *p, DWORD len) {
    if (p == NULL || len < 2 || p[0] != 0x30) return 0;
    size_t hdr = 2, body;
    if (p[1] < 0x80) {
        body = p[1];
    } else {
        size_t n = p[1] & 0x7F;
        if (n == 0 || n > 4 || len < 2 + n) return 0;
        body = 0;
        for (size_t i = 0; i < n; i++) body = (body << 8) | p[2 + i];
        hdr += n;
    }
    return hdr + body == len;
}

FAKEWIN_EXPORT const CERT_CONTEXT *WINAPI CertCreateCertificateContext(DWORD encoding, const BYTE *der, DWORD len) {
    if ((encoding & X509_ASN_ENCODING) == 0) {
        SetLastError(E_INVALIDARG);
        return NULL;
    }
    if (!looks_like_der_certificate(der, len)) {
        SetLastError(CRYPT_E_ASN1_BADTAG);
        return NULL;
    }
    fake_cert_context *ctx = context_new(der, len, NULL, 0);
    if (ctx == NULL) {
        SetLastError(ERROR_NOT_ENOUGH_MEMORY);
        return NULL;
    }
    return &ctx->pub;
}

fake_cert_context *fakewin_cert_from_public(const CERT_CONTEXT *pub) {
    if (pub == NULL || !fakewin_handle_live(KIND_CERT, pub)) return NULL;
    return (fake_cert_context *)pub; /* `pub` is the first member */
}

FAKEWIN_EXPORT const CERT_CONTEXT *WINAPI CertDuplicateCertificateContext(const CERT_CONTEXT *pub) {
    fake_cert_context *ctx = fakewin_cert_from_public(pub);
    if (ctx == NULL) return NULL; /* Windows returns NULL for NULL and does not validate further */
    pthread_mutex_lock(&g_lock);
    ctx->refs++;
    pthread_mutex_unlock(&g_lock);
    return pub;
}

/* ---- CERT_KEY_PROV_INFO_PROP_ID: one block holding the structure and everything it points to ---- */

static size_t wide_bytes(LPCWSTR s) { return s == NULL ? 0 : (fakewin_wcslen(s) + 1) * sizeof(WCHAR); }

/* `p` (a pointer into the block at `from`) moved to the same offset in the block at `to`. */
static void *relocate(const void *p, const void *from, void *to) {
    return p == NULL ? NULL : (BYTE *)to + ((const BYTE *)p - (const BYTE *)from);
}

/* Make the pointers of a block copied from `from` to `to` point into `to`. */
static void prov_info_relocate(CRYPT_KEY_PROV_INFO *to, const CRYPT_KEY_PROV_INFO *from) {
    to->pwszContainerName = relocate(from->pwszContainerName, from, to);
    to->pwszProvName = relocate(from->pwszProvName, from, to);
    to->rgProvParam = relocate(from->rgProvParam, from, to);
    for (DWORD i = 0; i < to->cProvParam; i++) to->rgProvParam[i].pbData = relocate(from->rgProvParam[i].pbData, from, to);
}

/* 0 and *out / *size set, or a Win32 error: E_INVALIDARG for a structure Windows documents as invalid. */
static DWORD prov_info_copy(const CRYPT_KEY_PROV_INFO *in, CRYPT_KEY_PROV_INFO **out, size_t *size) {
    if (in->dwProvType == 0 && (in->cProvParam != 0 || in->rgProvParam != NULL)) return E_INVALIDARG;
    if (in->cProvParam != 0 && in->rgProvParam == NULL) return E_INVALIDARG;
    size_t total = sizeof *in + in->cProvParam * sizeof(CRYPT_KEY_PROV_PARAM);
    total += wide_bytes(in->pwszContainerName) + wide_bytes(in->pwszProvName);
    for (DWORD i = 0; i < in->cProvParam; i++) {
        if (in->rgProvParam[i].cbData != 0 && in->rgProvParam[i].pbData == NULL) return E_INVALIDARG;
        total += in->rgProvParam[i].cbData;
    }
    BYTE *block = calloc(1, total);
    if (block == NULL) return ERROR_NOT_ENOUGH_MEMORY;
    CRYPT_KEY_PROV_INFO *copy = (CRYPT_KEY_PROV_INFO *)block;
    *copy = *in;
    size_t off = sizeof *in; /* params first: they need pointer alignment, the block's own */
    if (in->cProvParam != 0) {
        copy->rgProvParam = (CRYPT_KEY_PROV_PARAM *)(block + off);
        memcpy(copy->rgProvParam, in->rgProvParam, in->cProvParam * sizeof(CRYPT_KEY_PROV_PARAM));
        off += in->cProvParam * sizeof(CRYPT_KEY_PROV_PARAM);
    } else {
        copy->rgProvParam = NULL;
    }
    LPCWSTR strings[2] = {in->pwszContainerName, in->pwszProvName};
    LPWSTR *targets[2] = {&copy->pwszContainerName, &copy->pwszProvName};
    for (int i = 0; i < 2; i++) {
        size_t n = wide_bytes(strings[i]);
        *targets[i] = n ? (LPWSTR)(block + off) : NULL;
        if (n) memcpy(block + off, strings[i], n);
        off += n;
    }
    for (DWORD i = 0; i < in->cProvParam; i++) {
        DWORD n = in->rgProvParam[i].cbData;
        copy->rgProvParam[i].pbData = n ? block + off : NULL;
        if (n) memcpy(block + off, in->rgProvParam[i].pbData, n);
        off += n;
    }
    fakewin_handle_add(KIND_PROV_INFO, block);
    *out = copy;
    *size = total;
    return 0;
}

static void prov_info_free(CRYPT_KEY_PROV_INFO *info) {
    if (info == NULL) return;
    fakewin_handle_remove(KIND_PROV_INFO, info);
    free(info);
}

FAKEWIN_EXPORT BOOL WINAPI CertFreeCertificateContext(const CERT_CONTEXT *pub) {
    if (pub == NULL) return TRUE; /* documented: freeing NULL is a no-op */
    fake_cert_context *ctx = fakewin_cert_from_public(pub);
    if (ctx == NULL) {
        fakewin_handle_remove(KIND_CERT, pub); /* counts the bad free */
        return TRUE;                            /* Windows always returns TRUE */
    }
    pthread_mutex_lock(&g_lock);
    int last = --ctx->refs == 0;
    pthread_mutex_unlock(&g_lock);
    if (!last) return TRUE;
    fakewin_handle_remove(KIND_CERT, ctx);
    pthread_mutex_lock(&g_lock);
    store_release_locked(ctx->pub.hCertStore);
    prov_info_free(ctx->prov_info);
    ctx->prov_info = NULL;
    NCRYPT_KEY_HANDLE owned = ctx->has_key && ctx->key_owned ? ctx->key : 0;
    pthread_mutex_unlock(&g_lock);
    if (owned) NCryptFreeObject(owned); /* property 78 owns its handle: released on the final free */
    free(ctx->pub.pbCertEncoded);
    free(ctx);
    return TRUE;
}

FAKEWIN_EXPORT BOOL WINAPI CertSetCertificateContextProperty(const CERT_CONTEXT *pub, DWORD prop, DWORD flags,
                                                             const void *data) {
    /* persistence flags do not matter for a context outside any persisted store; only the release flag does */
    fake_cert_context *ctx = fakewin_cert_from_public(pub);
    if (ctx == NULL) return fail(ERROR_INVALID_PARAMETER);
    if (prop == 0 || prop > 0xFFFF) return fail(E_INVALIDARG);
    if (prop == CERT_KEY_PROV_INFO_PROP_ID) {
        CRYPT_KEY_PROV_INFO *copy = NULL;
        size_t size = 0;
        if (data != NULL) {
            DWORD err = prov_info_copy(data, &copy, &size);
            if (err != 0) return fail(err);
        }
        pthread_mutex_lock(&g_lock);
        CRYPT_KEY_PROV_INFO *old = ctx->prov_info;
        ctx->prov_info = copy; /* "If a property already exists, its old value is replaced" */
        ctx->prov_info_size = size;
        pthread_mutex_unlock(&g_lock);
        prov_info_free(old);
        return TRUE;
    }
    if (prop != CERT_NCRYPT_KEY_HANDLE_PROP_ID) return fail(E_INVALIDARG); /* the subset we emulate */
    pthread_mutex_lock(&g_lock);
    g_prop78_sets++;
    NCRYPT_KEY_HANDLE old = ctx->has_key && ctx->key_owned ? ctx->key : 0;
    if (data == NULL) {
        ctx->has_key = 0;
        ctx->key = 0;
        ctx->key_owned = 0;
    } else {
        ctx->has_key = 1;
        ctx->key = *(const NCRYPT_KEY_HANDLE *)data;
        ctx->key_owned = (flags & CERT_STORE_NO_CRYPT_RELEASE_FLAG) == 0;
    }
    pthread_mutex_unlock(&g_lock);
    /* The replaced (or deleted) handle was the context's: released now, unless it is the same one again. */
    if (old && !(ctx->has_key && ctx->key == old)) NCryptFreeObject(old);
    return TRUE;
}

FAKEWIN_EXPORT BOOL WINAPI CertGetCertificateContextProperty(const CERT_CONTEXT *pub, DWORD prop, void *data,
                                                             DWORD *size) {
    fake_cert_context *ctx = fakewin_cert_from_public(pub);
    if (ctx == NULL || size == NULL) return fail(ERROR_INVALID_PARAMETER);
    if (prop == CERT_KEY_PROV_INFO_PROP_ID) {
        pthread_mutex_lock(&g_lock);
        DWORD err = 0;
        if (ctx->prov_info == NULL) {
            err = CRYPT_E_NOT_FOUND;
        } else if (data == NULL) {
            *size = (DWORD)ctx->prov_info_size;
        } else if (*size < ctx->prov_info_size) {
            *size = (DWORD)ctx->prov_info_size;
            err = ERROR_MORE_DATA;
        } else {
            memcpy(data, ctx->prov_info, ctx->prov_info_size);
            prov_info_relocate(data, ctx->prov_info);
            *size = (DWORD)ctx->prov_info_size;
        }
        pthread_mutex_unlock(&g_lock);
        return err ? fail(err) : TRUE;
    }
    if (prop != CERT_NCRYPT_KEY_HANDLE_PROP_ID || !ctx->has_key) return fail(CRYPT_E_NOT_FOUND);
    DWORD need = sizeof(NCRYPT_KEY_HANDLE);
    if (data == NULL) {
        *size = need;
        return TRUE;
    }
    if (*size < need) {
        *size = need;
        return fail(ERROR_MORE_DATA);
    }
    memcpy(data, &ctx->key, need);
    *size = need;
    return TRUE;
}

FAKEWIN_EXPORT const CERT_CONTEXT *WINAPI CertEnumCertificatesInStore(void *hstore, const CERT_CONTEXT *prev) {
    fake_cert_store *store = hstore;
    size_t next = 0;
    if (store == NULL) {
        SetLastError(ERROR_INVALID_PARAMETER);
        return NULL;
    }
    if (prev != NULL) {
        fake_cert_context *p = fakewin_cert_from_public(prev);
        if (p == NULL || p->pub.hCertStore != store) {
            SetLastError(E_INVALIDARG);
            return NULL;
        }
        next = p->store_index + 1;
    }
    /* Hold the store across freeing `prev`, which may drop the store's last outside reference. */
    pthread_mutex_lock(&g_lock);
    store->refs++;
    pthread_mutex_unlock(&g_lock);
    if (prev != NULL) CertFreeCertificateContext(prev); /* documented: the previous context is freed */
    const CERT_CONTEXT *result = NULL;
    DWORD error = CRYPT_E_NOT_FOUND;
    if (next < store->count) {
        fake_cert_context *ctx = context_new(store->der[next], (DWORD)store->der_len[next], store, next);
        if (ctx != NULL) result = &ctx->pub;
        else error = ERROR_NOT_ENOUGH_MEMORY;
    }
    pthread_mutex_lock(&g_lock);
    store_release_locked(store);
    pthread_mutex_unlock(&g_lock);
    if (result == NULL) SetLastError(error);
    return result;
}

const CERT_CONTEXT *fakewin_cert_new_in_store(const unsigned char *const *der, const size_t *len, size_t count) {
    if (count == 0) return NULL;
    fake_cert_store *store = calloc(1, sizeof *store);
    if (store == NULL) return NULL;
    store->der = calloc(count, sizeof *store->der);
    store->der_len = calloc(count, sizeof *store->der_len);
    if (store->der == NULL || store->der_len == NULL) goto oom;
    for (size_t i = 0; i < count; i++) {
        store->der[i] = malloc(len[i] ? len[i] : 1);
        if (store->der[i] == NULL) goto oom;
        memcpy(store->der[i], der[i], len[i]);
        store->der_len[i] = len[i];
        store->count = i + 1;
    }
    store->refs = 1; /* ours, dropped below once the context holds its own */
    fake_cert_context *ctx = context_new(store->der[0], (DWORD)store->der_len[0], store, 0);
    pthread_mutex_lock(&g_lock);
    store_release_locked(store);
    pthread_mutex_unlock(&g_lock);
    return ctx ? &ctx->pub : NULL;
oom:
    store->refs = 1;
    store_release_locked(store);
    return NULL;
}

int fakewin_cert_key(const CERT_CONTEXT *pub, NCRYPT_KEY_HANDLE *key) {
    fake_cert_context *ctx = fakewin_cert_from_public(pub);
    if (ctx == NULL) return -1;
    pthread_mutex_lock(&g_lock);
    int has = ctx->has_key;
    if (has) *key = ctx->key;
    pthread_mutex_unlock(&g_lock);
    return has ? 0 : -1;
}

static WCHAR *wide_dup(LPCWSTR s) {
    size_t n = wide_bytes(s);
    WCHAR *copy = n ? malloc(n) : NULL;
    if (copy != NULL) memcpy(copy, s, n);
    return copy;
}

int fakewin_cert_acquire_key(const CERT_CONTEXT *pub, fake_cert_key *out) {
    memset(out, 0, sizeof *out);
    fake_cert_context *ctx = fakewin_cert_from_public(pub);
    if (ctx == NULL) return -1;
    pthread_mutex_lock(&g_lock);
    if (ctx->has_key) { /* the cached handle wins, as CERT_KEY_CONTEXT_PROP_ID does on Windows */
        out->key = ctx->key;
        pthread_mutex_unlock(&g_lock);
        return 0;
    }
    const CRYPT_KEY_PROV_INFO *info = ctx->prov_info;
    int usable = info != NULL && info->dwProvType == 0 && info->pwszContainerName != NULL; /* no CSPs here */
    WCHAR *provider = usable ? wide_dup(info->pwszProvName) : NULL; /* NULL = the default KSP */
    WCHAR *name = usable ? wide_dup(info->pwszContainerName) : NULL;
    DWORD spec = usable ? info->dwKeySpec : 0;
    DWORD flags = usable ? info->dwFlags & ~(DWORD)CERT_SET_KEY_CONTEXT_PROP_ID : 0; /* the rest go to NCrypt */
    int named_provider = usable && info->pwszProvName != NULL;
    pthread_mutex_unlock(&g_lock);
    int ok = usable && name != NULL && (provider != NULL || !named_provider) &&
             NCryptOpenStorageProvider(&out->provider, provider, 0) == ERROR_SUCCESS;
    if (ok && NCryptOpenKey(out->provider, &out->key, name, spec, flags) != ERROR_SUCCESS) {
        NCryptFreeObject(out->provider);
        ok = 0;
    }
    free(provider);
    free(name);
    if (!ok) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    out->opened_by_name = 1;
    return 0;
}

void fakewin_cert_release_key(fake_cert_key *key) {
    if (key->opened_by_name) {
        NCryptFreeObject(key->key);
        NCryptFreeObject(key->provider);
    }
    memset(key, 0, sizeof *key);
}

char *fakewin_cert_key_identity(const CERT_CONTEXT *pub) {
    fake_cert_context *ctx = fakewin_cert_from_public(pub);
    if (ctx == NULL) return NULL;
    char *id = NULL;
    pthread_mutex_lock(&g_lock);
    if (ctx->has_key) {
        if (asprintf(&id, "handle:%lx", (unsigned long)ctx->key) < 0) id = NULL;
    } else if (ctx->prov_info != NULL) {
        const CRYPT_KEY_PROV_INFO *info = ctx->prov_info;
        char *provider = fakewin_wcs_to_utf8(info->pwszProvName), *name = fakewin_wcs_to_utf8(info->pwszContainerName);
        if (asprintf(&id, "name:%u:%lx:%lx:%s\n%s", (unsigned)info->dwProvType, (unsigned long)info->dwFlags,
                     (unsigned long)info->dwKeySpec, provider ? provider : "", name ? name : "") < 0)
            id = NULL;
        free(provider);
        free(name);
    }
    pthread_mutex_unlock(&g_lock);
    return id;
}

FAKEWIN_EXPORT int FakeCrypt32_Reset(void) {
    pthread_mutex_lock(&g_lock);
    g_prop78_sets = 0;
    pthread_mutex_unlock(&g_lock);
    return 0;
}

FAKEWIN_EXPORT int FakeCrypt32_Prop78Sets(void) {
    pthread_mutex_lock(&g_lock);
    int n = g_prop78_sets;
    pthread_mutex_unlock(&g_lock);
    return n;
}

FAKEWIN_EXPORT int FakeCrypt32_RefCount(const void *pub) {
    fake_cert_context *ctx = fakewin_cert_from_public(pub);
    if (ctx == NULL) return 0;
    pthread_mutex_lock(&g_lock);
    int refs = ctx->refs;
    pthread_mutex_unlock(&g_lock);
    return refs;
}
