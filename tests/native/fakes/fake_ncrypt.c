/* A Linux stand-in for the ncrypt.dll calls the bindings make, with Windows semantics:
 * two-pass size queries, NTE_* codes, named keys in a process-global store, per-boot keys that go stale
 * after a simulated reboot, VBS on/off for NCRYPT_USE_VIRTUAL_ISOLATION_FLAG, export policy, and real
 * RSA keys and PSS/PKCS#1 signatures through OpenSSL 3. Every handle is tracked for leak checks.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "fakewin.h"

/* BEGIN PYTHON CDEF
void FakeNCrypt_Reset(void);
void FakeNCrypt_SetVbs(int mode);
void FakeNCrypt_Reboot(void);
int FakeNCrypt_StoredKeys(void);
int FakeNCrypt_Calls(const char *function);
void FakeNCrypt_FailNext(const char *function, int32_t status);
void FakeNCrypt_UnderstateNextSize(void);
void FakeNCrypt_PreemptNextCreate(void);
void FakeNCrypt_SetVirtualIsoSize(int size);
END PYTHON CDEF */

#define NCRYPT_NO_KEY_VALIDATION 0x00000008
#define NCRYPT_MACHINE_KEY_FLAG 0x00000020
#define NCRYPT_SILENT_FLAG 0x00000040
#define NCRYPT_OVERWRITE_KEY_FLAG 0x00000080
#define NCRYPT_USE_VIRTUAL_ISOLATION_FLAG 0x00020000
#define NCRYPT_USE_PER_BOOT_KEY_FLAG 0x00040000
#define NCRYPT_PERSIST_ONLY_FLAG 0x40000000
#define NCRYPT_PERSIST_FLAG 0x80000000
#define NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG 0x00000002
#define BCRYPT_PAD_PKCS1 0x00000002
#define BCRYPT_PAD_PSS 0x00000008
#define BCRYPT_RSAPUBLIC_MAGIC 0x31415352u /* "RSA1" */

#define MS_KSP "Microsoft Software Key Storage Provider"

/* What Windows returns when VBS key isolation is unavailable (MSAL.NET's IsVbsUnavailable checks it). */
#define NTE_VBS_UNAVAILABLE ((SECURITY_STATUS)0x80890014)

/* FakeNCrypt_SetVbs modes */
#define VBS_OFF_REFUSE 0 /* finalizing an isolated key fails with NTE_VBS_UNAVAILABLE (0x80890014) */
#define VBS_ON 1
#define VBS_OFF_SILENT 2 /* the key is made anyway, without isolation: "Virtual Iso" reads 0 */
#define VBS_OFF_NOT_SUPPORTED 3 /* finalizing an isolated key fails with NTE_NOT_SUPPORTED (older systems) */

typedef struct {
    LPCWSTR pszAlgId;
    ULONG cbSalt;
} BCRYPT_PSS_PADDING_INFO;

typedef struct {
    LPCWSTR pszAlgId;
} BCRYPT_PKCS1_PADDING_INFO;

typedef struct fake_key {
    char *name; /* NULL = ephemeral */
    DWORD create_flags;
    DWORD length;
    DWORD export_policy;
    DWORD virtual_iso;
    int finalized;
    int stored;
    int stale;
    int refs; /* open handles + 1 while stored */
    EVP_PKEY *pkey;
    struct fake_key *next; /* store link */
} fake_key;

typedef struct {
    int unused;
} prov_obj;

typedef struct {
    fake_key *key;
} key_obj;

static const char KIND_PROV[] = "ncrypt.provider";
static const char KIND_KEY[] = "ncrypt.key";

enum { F_OPEN_PROV, F_OPEN_KEY, F_CREATE, F_SET_PROP, F_FINALIZE, F_GET_PROP, F_EXPORT, F_SIGN, F_DELETE, F_FREE, F_COUNT };
static const char *const g_fn_names[F_COUNT] = {
    "NCryptOpenStorageProvider", "NCryptOpenKey",   "NCryptCreatePersistedKey", "NCryptSetProperty",
    "NCryptFinalizeKey",         "NCryptGetProperty", "NCryptExportKey",        "NCryptSignHash",
    "NCryptDeleteKey",           "NCryptFreeObject",
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static fake_key *g_store;
static int g_vbs = VBS_ON;
static int g_calls[F_COUNT];
static SECURITY_STATUS g_fail_next[F_COUNT];
static int g_understate_next;
static int g_preempt_next;
static int g_virtual_iso_size = sizeof(DWORD); /* bytes "Virtual Iso" reads as (value in the first byte) */

/* ---- helpers (called with g_lock held) ---- */

static SECURITY_STATUS enter(int fn) {
    pthread_mutex_lock(&g_lock);
    g_calls[fn]++;
    SECURITY_STATUS st = g_fail_next[fn];
    g_fail_next[fn] = 0;
    return st;
}

static SECURITY_STATUS leave(SECURITY_STATUS st) {
    pthread_mutex_unlock(&g_lock);
    return st;
}

static void key_release(fake_key *k) {
    if (--k->refs > 0) return;
    EVP_PKEY_free(k->pkey);
    free(k->name);
    free(k);
}

static fake_key *store_find(const char *name, int machine) {
    for (fake_key *k = g_store; k != NULL; k = k->next) {
        if (strcmp(k->name, name) == 0 && ((k->create_flags & NCRYPT_MACHINE_KEY_FLAG) != 0) == machine) return k;
    }
    return NULL;
}

static void store_add(fake_key *k) {
    k->stored = 1;
    k->refs++;
    k->next = g_store;
    g_store = k;
}

static void store_remove(fake_key *k) {
    for (fake_key **p = &g_store; *p != NULL; p = &(*p)->next) {
        if (*p == k) {
            *p = k->next;
            k->next = NULL;
            k->stored = 0;
            key_release(k);
            return;
        }
    }
}

static key_obj *key_handle(NCRYPT_HANDLE h) {
    return fakewin_handle_live(KIND_KEY, (void *)h) ? (key_obj *)h : NULL;
}

static int prov_handle(NCRYPT_HANDLE h) { return fakewin_handle_live(KIND_PROV, (void *)h); }

static NCRYPT_KEY_HANDLE new_key_handle(fake_key *k) {
    key_obj *o = calloc(1, sizeof *o);
    if (o == NULL) return 0;
    o->key = k;
    k->refs++;
    fakewin_handle_add(KIND_KEY, o);
    return (NCRYPT_KEY_HANDLE)o;
}

/* The two-pass contract: NULL output -> size only; too small -> size + NTE_BUFFER_TOO_SMALL. */
static SECURITY_STATUS copy_out(const void *value, DWORD n, PBYTE out, DWORD cb, DWORD *pcb) {
    if (out == NULL) {
        *pcb = n - (g_understate_next && n > 0 ? 1 : 0);
        g_understate_next = 0;
        return ERROR_SUCCESS;
    }
    *pcb = n;
    if (cb < n) return NTE_BUFFER_TOO_SMALL;
    memcpy(out, value, n);
    return ERROR_SUCCESS;
}

static SECURITY_STATUS generate(fake_key *k) {
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)k->length);
    if (pkey == NULL) return NTE_INTERNAL_ERROR;
    k->pkey = pkey;
    k->virtual_iso = (k->create_flags & NCRYPT_USE_VIRTUAL_ISOLATION_FLAG) && g_vbs == VBS_ON ? 1 : 0;
    k->finalized = 1;
    return ERROR_SUCCESS;
}

static fake_key *new_key(const char *name, DWORD flags) {
    fake_key *k = calloc(1, sizeof *k);
    if (k == NULL) return NULL;
    k->name = name ? strdup(name) : NULL;
    k->create_flags = flags;
    k->length = 1024; /* an old KSP default: the binding must ask for 2048 explicitly */
    k->export_policy = NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG | 1; /* permissive default: the binding must lock it */
    return k;
}

/* Another process wins the race: the named key appears between the caller's open and create. */
static void preempt(const char *name, DWORD flags) {
    if (store_find(name, (flags & NCRYPT_MACHINE_KEY_FLAG) != 0) != NULL) return;
    fake_key *k = new_key(name, flags & ~NCRYPT_OVERWRITE_KEY_FLAG);
    if (k == NULL) return;
    k->length = 2048;
    k->export_policy = 0;
    if (generate(k) != ERROR_SUCCESS) {
        k->refs = 1;
        key_release(k);
        return;
    }
    store_add(k);
}

/* ---- the NCrypt API ---- */

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptOpenStorageProvider(NCRYPT_PROV_HANDLE *phProvider,
                                                                LPCWSTR pszProviderName, DWORD dwFlags) {
    SECURITY_STATUS st = enter(F_OPEN_PROV);
    if (st != 0) return leave(st);
    if (phProvider == NULL) return leave(NTE_INVALID_PARAMETER);
    if (dwFlags != 0) return leave(NTE_BAD_FLAGS);
    if (pszProviderName != NULL && !fakewin_wcs_eq(pszProviderName, MS_KSP)) return leave(NTE_BAD_PROVIDER);
    prov_obj *p = calloc(1, sizeof *p);
    if (p == NULL) return leave(NTE_NO_MEMORY);
    fakewin_handle_add(KIND_PROV, p);
    *phProvider = (NCRYPT_PROV_HANDLE)p;
    return leave(ERROR_SUCCESS);
}

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptOpenKey(NCRYPT_PROV_HANDLE hProvider, NCRYPT_KEY_HANDLE *phKey,
                                                    LPCWSTR pszKeyName, DWORD dwLegacyKeySpec, DWORD dwFlags) {
    SECURITY_STATUS st = enter(F_OPEN_KEY);
    if (st != 0) return leave(st);
    if (!prov_handle(hProvider)) return leave(NTE_INVALID_HANDLE);
    if (phKey == NULL || pszKeyName == NULL || dwLegacyKeySpec > 2) return leave(NTE_INVALID_PARAMETER);
    if (dwFlags & ~(DWORD)(NCRYPT_SILENT_FLAG | NCRYPT_MACHINE_KEY_FLAG)) return leave(NTE_BAD_FLAGS);
    char *name = fakewin_wcs_to_utf8(pszKeyName);
    if (name == NULL) return leave(NTE_NO_MEMORY);
    fake_key *k = store_find(name, (dwFlags & NCRYPT_MACHINE_KEY_FLAG) != 0);
    free(name);
    if (k == NULL) return leave(NTE_BAD_KEYSET);
    NCRYPT_KEY_HANDLE h = new_key_handle(k);
    if (h == 0) return leave(NTE_NO_MEMORY);
    *phKey = h;
    return leave(ERROR_SUCCESS);
}

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptCreatePersistedKey(NCRYPT_PROV_HANDLE hProvider, NCRYPT_KEY_HANDLE *phKey,
                                                               LPCWSTR pszAlgId, LPCWSTR pszKeyName,
                                                               DWORD dwLegacyKeySpec, DWORD dwFlags) {
    const DWORD allowed = NCRYPT_MACHINE_KEY_FLAG | NCRYPT_SILENT_FLAG | NCRYPT_OVERWRITE_KEY_FLAG |
                          NCRYPT_USE_VIRTUAL_ISOLATION_FLAG | NCRYPT_USE_PER_BOOT_KEY_FLAG;
    SECURITY_STATUS st = enter(F_CREATE);
    if (st != 0) return leave(st);
    if (!prov_handle(hProvider)) return leave(NTE_INVALID_HANDLE);
    if (phKey == NULL || pszAlgId == NULL || dwLegacyKeySpec > 2) return leave(NTE_INVALID_PARAMETER);
    if (dwFlags & ~allowed) return leave(NTE_BAD_FLAGS);
    if (!fakewin_wcs_eq(pszAlgId, "RSA")) return leave(NTE_NOT_SUPPORTED);
    char *name = fakewin_wcs_to_utf8(pszKeyName);
    if (pszKeyName != NULL && name == NULL) return leave(NTE_NO_MEMORY);
    if (name != NULL && g_preempt_next) {
        g_preempt_next = 0;
        preempt(name, dwFlags);
    }
    if (name != NULL && !(dwFlags & NCRYPT_OVERWRITE_KEY_FLAG) &&
        store_find(name, (dwFlags & NCRYPT_MACHINE_KEY_FLAG) != 0) != NULL) {
        free(name);
        return leave(NTE_EXISTS);
    }
    fake_key *k = new_key(name, dwFlags);
    free(name);
    if (k == NULL) return leave(NTE_NO_MEMORY);
    NCRYPT_KEY_HANDLE h = new_key_handle(k);
    if (h == 0) {
        k->refs = 1;
        key_release(k);
        return leave(NTE_NO_MEMORY);
    }
    *phKey = h;
    return leave(ERROR_SUCCESS);
}

static SECURITY_STATUS read_dword(PBYTE in, DWORD cb, DWORD *out) {
    if (in == NULL || cb != sizeof(DWORD)) return NTE_INVALID_PARAMETER;
    memcpy(out, in, sizeof(DWORD));
    return ERROR_SUCCESS;
}

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptSetProperty(NCRYPT_HANDLE hObject, LPCWSTR pszProperty, PBYTE pbInput,
                                                        DWORD cbInput, DWORD dwFlags) {
    SECURITY_STATUS st = enter(F_SET_PROP);
    if (st != 0) return leave(st);
    key_obj *o = key_handle(hObject);
    if (o == NULL) return leave(prov_handle(hObject) ? NTE_NOT_SUPPORTED : NTE_INVALID_HANDLE);
    if (pszProperty == NULL) return leave(NTE_INVALID_PARAMETER);
    if (dwFlags & ~(DWORD)(NCRYPT_SILENT_FLAG | NCRYPT_PERSIST_FLAG | NCRYPT_PERSIST_ONLY_FLAG))
        return leave(NTE_BAD_FLAGS);
    fake_key *k = o->key;
    DWORD value = 0;
    if (fakewin_wcs_eq(pszProperty, "Length")) {
        if ((st = read_dword(pbInput, cbInput, &value)) != 0) return leave(st);
        if (k->finalized) return leave(NTE_PERM);
        if (value < 512 || value > 16384 || value % 64 != 0) return leave(NTE_INVALID_PARAMETER);
        k->length = value;
        return leave(ERROR_SUCCESS);
    }
    if (fakewin_wcs_eq(pszProperty, "Export Policy")) {
        if ((st = read_dword(pbInput, cbInput, &value)) != 0) return leave(st);
        if (k->finalized) return leave(NTE_PERM); /* a policy is never loosened after finalize */
        k->export_policy = value;
        return leave(ERROR_SUCCESS);
    }
    return leave(NTE_NOT_SUPPORTED);
}

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptFinalizeKey(NCRYPT_KEY_HANDLE hKey, DWORD dwFlags) {
    SECURITY_STATUS st = enter(F_FINALIZE);
    if (st != 0) return leave(st);
    key_obj *o = key_handle(hKey);
    if (o == NULL) return leave(NTE_INVALID_HANDLE);
    if (dwFlags & ~(DWORD)(NCRYPT_SILENT_FLAG | NCRYPT_NO_KEY_VALIDATION)) return leave(NTE_BAD_FLAGS);
    fake_key *k = o->key;
    if (k->finalized) return leave(NTE_BAD_KEY_STATE);
    if ((k->create_flags & NCRYPT_USE_VIRTUAL_ISOLATION_FLAG) && g_vbs == VBS_OFF_REFUSE)
        return leave(NTE_VBS_UNAVAILABLE);
    if ((k->create_flags & NCRYPT_USE_VIRTUAL_ISOLATION_FLAG) && g_vbs == VBS_OFF_NOT_SUPPORTED)
        return leave(NTE_NOT_SUPPORTED);
    fake_key *existing = NULL;
    if (k->name != NULL) {
        existing = store_find(k->name, (k->create_flags & NCRYPT_MACHINE_KEY_FLAG) != 0);
        if (existing != NULL && !(k->create_flags & NCRYPT_OVERWRITE_KEY_FLAG)) return leave(NTE_EXISTS);
    }
    if ((st = generate(k)) != 0) return leave(st);
    if (existing != NULL) store_remove(existing);
    if (k->name != NULL) store_add(k);
    return leave(ERROR_SUCCESS);
}

static SECURITY_STATUS wide_out(const char *s, PBYTE out, DWORD cb, DWORD *pcb) {
    WCHAR *w = fakewin_utf8_to_wcs(s);
    if (w == NULL) return NTE_NO_MEMORY;
    SECURITY_STATUS st = copy_out(w, (DWORD)((fakewin_wcslen(w) + 1) * sizeof(WCHAR)), out, cb, pcb);
    free(w);
    return st;
}

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptGetProperty(NCRYPT_HANDLE hObject, LPCWSTR pszProperty, PBYTE pbOutput,
                                                        DWORD cbOutput, DWORD *pcbResult, DWORD dwFlags) {
    SECURITY_STATUS st = enter(F_GET_PROP);
    if (st != 0) return leave(st);
    key_obj *o = key_handle(hObject);
    int is_prov = o == NULL && prov_handle(hObject);
    if (o == NULL && !is_prov) return leave(NTE_INVALID_HANDLE);
    if (pszProperty == NULL || pcbResult == NULL) return leave(NTE_INVALID_PARAMETER);
    if (dwFlags & ~(DWORD)NCRYPT_SILENT_FLAG) return leave(NTE_BAD_FLAGS);
    if (is_prov) {
        if (fakewin_wcs_eq(pszProperty, "Name")) return leave(wide_out(MS_KSP, pbOutput, cbOutput, pcbResult));
        return leave(NTE_NOT_SUPPORTED);
    }
    fake_key *k = o->key;
    DWORD value;
    if (fakewin_wcs_eq(pszProperty, "Virtual Iso")) {
        if (g_virtual_iso_size != (int)sizeof(DWORD)) { /* a value of another size: the flag in its first byte */
            BYTE raw[16] = {0};
            raw[0] = (BYTE)(k->virtual_iso != 0);
            return leave(copy_out(raw, (DWORD)g_virtual_iso_size, pbOutput, cbOutput, pcbResult));
        }
        value = k->virtual_iso;
    } else if (fakewin_wcs_eq(pszProperty, "Length")) {
        value = k->length;
    } else if (fakewin_wcs_eq(pszProperty, "Export Policy")) {
        value = k->export_policy;
    } else if (fakewin_wcs_eq(pszProperty, "Name")) {
        if (k->name == NULL) return leave(NTE_NOT_FOUND);
        return leave(wide_out(k->name, pbOutput, cbOutput, pcbResult));
    } else if (fakewin_wcs_eq(pszProperty, "Algorithm Name") || fakewin_wcs_eq(pszProperty, "Algorithm Group")) {
        return leave(wide_out("RSA", pbOutput, cbOutput, pcbResult));
    } else {
        return leave(NTE_NOT_SUPPORTED);
    }
    return leave(copy_out(&value, sizeof value, pbOutput, cbOutput, pcbResult));
}

static void put_u32(BYTE *p, uint32_t v) { memcpy(p, &v, sizeof v); } /* little-endian, like Windows */

static SECURITY_STATUS rsa_public_blob(EVP_PKEY *pkey, BYTE **blob, DWORD *len) {
    BIGNUM *n = NULL, *e = NULL;
    SECURITY_STATUS st = NTE_INTERNAL_ERROR;
    if (!EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) ||
        !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e))
        goto done;
    DWORD cb_n = (DWORD)BN_num_bytes(n), cb_e = (DWORD)BN_num_bytes(e);
    *len = 6 * sizeof(uint32_t) + cb_e + cb_n;
    *blob = calloc(1, *len);
    if (*blob == NULL) {
        st = NTE_NO_MEMORY;
        goto done;
    }
    put_u32(*blob, BCRYPT_RSAPUBLIC_MAGIC);
    put_u32(*blob + 4, (uint32_t)EVP_PKEY_get_bits(pkey));
    put_u32(*blob + 8, cb_e);
    put_u32(*blob + 12, cb_n);
    BN_bn2bin(e, *blob + 24);
    BN_bn2bin(n, *blob + 24 + cb_e);
    st = ERROR_SUCCESS;
done:
    BN_free(n);
    BN_free(e);
    return st;
}

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptExportKey(NCRYPT_KEY_HANDLE hKey, NCRYPT_KEY_HANDLE hExportKey,
                                                      LPCWSTR pszBlobType, void *pParameterList, PBYTE pbOutput,
                                                      DWORD cbOutput, DWORD *pcbResult, DWORD dwFlags) {
    (void)pParameterList;
    SECURITY_STATUS st = enter(F_EXPORT);
    if (st != 0) return leave(st);
    key_obj *o = key_handle(hKey);
    if (o == NULL) return leave(NTE_INVALID_HANDLE);
    if (hExportKey != 0) return leave(NTE_NOT_SUPPORTED);
    if (pszBlobType == NULL || pcbResult == NULL) return leave(NTE_INVALID_PARAMETER);
    if (dwFlags & ~(DWORD)NCRYPT_SILENT_FLAG) return leave(NTE_BAD_FLAGS);
    fake_key *k = o->key;
    if (!k->finalized) return leave(NTE_BAD_KEY_STATE);
    if (fakewin_wcs_eq(pszBlobType, "RSAPUBLICBLOB")) {
        BYTE *blob = NULL;
        DWORD len = 0;
        if ((st = rsa_public_blob(k->pkey, &blob, &len)) == 0) st = copy_out(blob, len, pbOutput, cbOutput, pcbResult);
        free(blob);
        return leave(st);
    }
    if (fakewin_wcs_eq(pszBlobType, "RSAPRIVATEBLOB") || fakewin_wcs_eq(pszBlobType, "RSAFULLPRIVATEBLOB") ||
        fakewin_wcs_eq(pszBlobType, "PKCS8_PRIVATEKEY")) {
        if (!(k->export_policy & NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG)) return leave(NTE_PERM);
        return leave(NTE_NOT_SUPPORTED); /* the fake never hands out private keys */
    }
    return leave(NTE_BAD_TYPE);
}

static const EVP_MD *md_for(LPCWSTR alg) {
    if (fakewin_wcs_eq(alg, "SHA256")) return EVP_sha256();
    if (fakewin_wcs_eq(alg, "SHA384")) return EVP_sha384();
    if (fakewin_wcs_eq(alg, "SHA512")) return EVP_sha512();
    if (fakewin_wcs_eq(alg, "SHA1")) return EVP_sha1();
    return NULL;
}

static SECURITY_STATUS sign(EVP_PKEY *pkey, int pss, const EVP_MD *md, ULONG salt, PBYTE hash, DWORD cb_hash,
                            PBYTE sig, size_t *sig_len) {
    SECURITY_STATUS st = NTE_INVALID_PARAMETER;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
    if (ctx == NULL) return NTE_NO_MEMORY;
    if (EVP_PKEY_sign_init(ctx) <= 0) goto done;
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) <= 0) goto done;
    if (md != NULL && EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0) goto done;
    if (pss && (EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, (int)salt) <= 0))
        goto done;
    if (EVP_PKEY_sign(ctx, sig, sig_len, hash, cb_hash) <= 0) goto done;
    st = ERROR_SUCCESS;
done:
    EVP_PKEY_CTX_free(ctx);
    return st;
}

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptSignHash(NCRYPT_KEY_HANDLE hKey, void *pPaddingInfo, PBYTE pbHashValue,
                                                     DWORD cbHashValue, PBYTE pbSignature, DWORD cbSignature,
                                                     DWORD *pcbResult, DWORD dwFlags) {
    SECURITY_STATUS st = enter(F_SIGN);
    if (st != 0) return leave(st);
    key_obj *o = key_handle(hKey);
    if (o == NULL) return leave(NTE_INVALID_HANDLE);
    if (dwFlags & ~(DWORD)(BCRYPT_PAD_PKCS1 | BCRYPT_PAD_PSS | NCRYPT_SILENT_FLAG)) return leave(NTE_BAD_FLAGS);
    DWORD pad = dwFlags & (BCRYPT_PAD_PKCS1 | BCRYPT_PAD_PSS);
    if (pbHashValue == NULL || pcbResult == NULL || (pad != BCRYPT_PAD_PKCS1 && pad != BCRYPT_PAD_PSS))
        return leave(NTE_INVALID_PARAMETER);
    fake_key *k = o->key;
    if (!k->finalized) return leave(NTE_BAD_KEY_STATE);
    if (k->stale) return leave(NTE_BAD_KEYSET); /* per-boot key from a previous boot */
    DWORD size = (DWORD)EVP_PKEY_get_size(k->pkey);
    if (pbSignature == NULL) return leave(copy_out(NULL, size, NULL, 0, pcbResult));
    if (pPaddingInfo == NULL) return leave(NTE_INVALID_PARAMETER);
    const EVP_MD *md;
    ULONG salt = 0;
    if (pad == BCRYPT_PAD_PSS) {
        const BCRYPT_PSS_PADDING_INFO *info = pPaddingInfo;
        md = md_for(info->pszAlgId);
        salt = info->cbSalt;
    } else {
        md = md_for(((const BCRYPT_PKCS1_PADDING_INFO *)pPaddingInfo)->pszAlgId);
    }
    if (md == NULL) return leave(NTE_NOT_SUPPORTED);
    if (cbHashValue != (DWORD)EVP_MD_get_size(md)) return leave(NTE_INVALID_PARAMETER);
    *pcbResult = size;
    if (cbSignature < size) return leave(NTE_BUFFER_TOO_SMALL);
    size_t sig_len = cbSignature;
    st = sign(k->pkey, pad == BCRYPT_PAD_PSS, md, salt, pbHashValue, cbHashValue, pbSignature, &sig_len);
    if (st == 0) *pcbResult = (DWORD)sig_len;
    return leave(st);
}

static void free_key_handle(key_obj *o) {
    fakewin_handle_remove(KIND_KEY, o);
    key_release(o->key);
    free(o);
}

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptDeleteKey(NCRYPT_KEY_HANDLE hKey, DWORD dwFlags) {
    SECURITY_STATUS st = enter(F_DELETE);
    if (st != 0) return leave(st);
    key_obj *o = key_handle(hKey);
    if (o == NULL) return leave(NTE_INVALID_HANDLE);
    if (dwFlags & ~(DWORD)NCRYPT_SILENT_FLAG) return leave(NTE_BAD_FLAGS);
    if (!o->key->stored) return leave(NTE_BAD_KEYSET); /* already deleted by someone else */
    store_remove(o->key);
    free_key_handle(o); /* on success the handle is freed, as on Windows */
    return leave(ERROR_SUCCESS);
}

FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptFreeObject(NCRYPT_HANDLE hObject) {
    SECURITY_STATUS st = enter(F_FREE);
    if (st != 0) return leave(st);
    key_obj *o = key_handle(hObject);
    if (o != NULL) {
        free_key_handle(o);
        return leave(ERROR_SUCCESS);
    }
    if (prov_handle(hObject)) {
        fakewin_handle_remove(KIND_PROV, (void *)hObject);
        free((void *)hObject);
        return leave(ERROR_SUCCESS);
    }
    fakewin_handle_remove(KIND_KEY, (void *)hObject); /* counts the bad free */
    return leave(NTE_INVALID_HANDLE);
}

/* ---- shared with the other fakes ---- */

EVP_PKEY *fakewin_ncrypt_pkey(NCRYPT_KEY_HANDLE key) {
    pthread_mutex_lock(&g_lock);
    key_obj *o = key_handle(key);
    EVP_PKEY *pkey = o != NULL && o->key->finalized && !o->key->stale ? o->key->pkey : NULL;
    pthread_mutex_unlock(&g_lock);
    return pkey;
}

/* ---- test controls ---- */

FAKEWIN_EXPORT void FakeNCrypt_Reset(void) {
    pthread_mutex_lock(&g_lock);
    while (g_store != NULL) store_remove(g_store);
    g_vbs = VBS_ON;
    memset(g_calls, 0, sizeof g_calls);
    memset(g_fail_next, 0, sizeof g_fail_next);
    g_understate_next = 0;
    g_preempt_next = 0;
    g_virtual_iso_size = sizeof(DWORD);
    pthread_mutex_unlock(&g_lock);
}

FAKEWIN_EXPORT void FakeNCrypt_SetVbs(int mode) {
    pthread_mutex_lock(&g_lock);
    g_vbs = mode;
    pthread_mutex_unlock(&g_lock);
}

/* Per-boot keys survive in the store but their protection key is gone: opening works, signing fails. */
FAKEWIN_EXPORT void FakeNCrypt_Reboot(void) {
    pthread_mutex_lock(&g_lock);
    for (fake_key *k = g_store; k != NULL; k = k->next) {
        if (k->create_flags & NCRYPT_USE_PER_BOOT_KEY_FLAG) k->stale = 1;
    }
    pthread_mutex_unlock(&g_lock);
}

FAKEWIN_EXPORT int FakeNCrypt_StoredKeys(void) {
    pthread_mutex_lock(&g_lock);
    int n = 0;
    for (fake_key *k = g_store; k != NULL; k = k->next) n++;
    pthread_mutex_unlock(&g_lock);
    return n;
}

static int fn_index(const char *function) {
    for (int i = 0; i < F_COUNT; i++) {
        if (function != NULL && strcmp(function, g_fn_names[i]) == 0) return i;
    }
    return -1;
}

FAKEWIN_EXPORT int FakeNCrypt_Calls(const char *function) {
    int i = fn_index(function);
    pthread_mutex_lock(&g_lock);
    int n = i < 0 ? -1 : g_calls[i];
    pthread_mutex_unlock(&g_lock);
    return n;
}

/* The next call of `function` returns `status` without doing anything. */
FAKEWIN_EXPORT void FakeNCrypt_FailNext(const char *function, int32_t status) {
    int i = fn_index(function);
    if (i < 0) return;
    pthread_mutex_lock(&g_lock);
    g_fail_next[i] = status;
    pthread_mutex_unlock(&g_lock);
}

/* The next size query reports one byte too few, so the second pass meets NTE_BUFFER_TOO_SMALL. */
FAKEWIN_EXPORT void FakeNCrypt_UnderstateNextSize(void) {
    pthread_mutex_lock(&g_lock);
    g_understate_next = 1;
    pthread_mutex_unlock(&g_lock);
}

/* The next named NCryptCreatePersistedKey finds that another process just created the key. */
FAKEWIN_EXPORT void FakeNCrypt_PreemptNextCreate(void) {
    pthread_mutex_lock(&g_lock);
    g_preempt_next = 1;
    pthread_mutex_unlock(&g_lock);
}

/* "Virtual Iso" reads as `size` bytes (1..16; 4 = a DWORD, the default), the isolation flag in the first. */
FAKEWIN_EXPORT void FakeNCrypt_SetVirtualIsoSize(int size) {
    if (size < 1 || size > 16) return;
    pthread_mutex_lock(&g_lock);
    g_virtual_iso_size = size;
    pthread_mutex_unlock(&g_lock);
}
