/* Internals shared by fake_crypt32.c and fake_winhttp.c (not Windows API). */
#ifndef FAKE_CRYPT32_H
#define FAKE_CRYPT32_H

#include "fakewin.h"

#ifndef ERROR_NOT_ENOUGH_MEMORY
#define ERROR_NOT_ENOUGH_MEMORY 8
#endif

/* wincrypt.h's CERT_CONTEXT, x64 layout. */
typedef struct _CERT_CONTEXT {
    DWORD dwCertEncodingType;
    BYTE *pbCertEncoded;
    DWORD cbCertEncoded;
    void *pCertInfo;
    void *hCertStore;
} CERT_CONTEXT;

/* wincrypt.h's CRYPT_KEY_PROV_PARAM and CRYPT_KEY_PROV_INFO (CERT_KEY_PROV_INFO_PROP_ID), x64 layout. */
typedef struct _CRYPT_KEY_PROV_PARAM {
    DWORD dwParam;
    BYTE *pbData;
    DWORD cbData;
    DWORD dwFlags;
} CRYPT_KEY_PROV_PARAM;

typedef struct _CRYPT_KEY_PROV_INFO {
    LPWSTR pwszContainerName;
    LPWSTR pwszProvName;
    DWORD dwProvType;
    DWORD dwFlags;
    DWORD cProvParam;
    CRYPT_KEY_PROV_PARAM *rgProvParam;
    DWORD dwKeySpec;
} CRYPT_KEY_PROV_INFO;

/* A read-only in-memory store: the DER certificates a TLS server sent, leaf first. Reference counted
 * by the contexts that point at it. */
typedef struct fake_cert_store {
    int refs;
    size_t count;
    unsigned char **der;
    size_t *der_len;
} fake_cert_store;

typedef struct fake_cert_context {
    CERT_CONTEXT pub; /* first: a PCCERT_CONTEXT points here */
    int refs;
    size_t store_index;
    int has_key;
    NCRYPT_KEY_HANDLE key; /* CERT_NCRYPT_KEY_HANDLE_PROP_ID */
    int key_owned;         /* 1: the context owns `key` and frees it (set without CERT_STORE_NO_CRYPT_RELEASE_FLAG) */
    /* CERT_KEY_PROV_INFO_PROP_ID: a deep copy in one block (structure, params, strings, param data) whose
     * pointers point into the block itself; NULL = absent. Owned: freed with the context. */
    CRYPT_KEY_PROV_INFO *prov_info;
    size_t prov_info_size;
} fake_cert_context;

/* The private key of a context as CryptAcquireCertificatePrivateKey would find it for Schannel: the
 * handle of property 78 (the context's; lent for the handshake), else the key named by property 2, opened through the fake NCrypt
 * (NCryptOpenStorageProvider + NCryptOpenKey, with its dwKeySpec and flags): then ours to release. */
typedef struct fake_cert_key {
    NCRYPT_KEY_HANDLE key;
    NCRYPT_PROV_HANDLE provider; /* 0 unless opened by name */
    int opened_by_name;          /* 1: key and provider were opened for the caller */
} fake_cert_key;

/* From fake_ncrypt.c: the exported NCrypt calls the key lookup by name makes. */
FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptOpenStorageProvider(NCRYPT_PROV_HANDLE *phProvider,
                                                                LPCWSTR pszProviderName, DWORD dwFlags);
FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptOpenKey(NCRYPT_PROV_HANDLE hProvider, NCRYPT_KEY_HANDLE *phKey,
                                                    LPCWSTR pszKeyName, DWORD dwLegacyKeySpec, DWORD dwFlags);
FAKEWIN_EXPORT SECURITY_STATUS WINAPI NCryptFreeObject(NCRYPT_HANDLE hObject);

/* The exported crypt32 functions fake_winhttp.c calls. */
FAKEWIN_EXPORT const CERT_CONTEXT *WINAPI CertDuplicateCertificateContext(const CERT_CONTEXT *pub);
FAKEWIN_EXPORT BOOL WINAPI CertFreeCertificateContext(const CERT_CONTEXT *pub);

/* The live context behind a PCCERT_CONTEXT, or NULL. */
fake_cert_context *fakewin_cert_from_public(const CERT_CONTEXT *pub);
/* A new context (one reference, the caller frees it) for der[0], in a new store holding all `count`
 * certificates. NULL on failure or count == 0. */
const CERT_CONTEXT *fakewin_cert_new_in_store(const unsigned char *const *der, const size_t *len, size_t count);
/* The NCRYPT_KEY_HANDLE set with property 78: 0 and *key set, or -1 when absent / not a live context. */
int fakewin_cert_key(const CERT_CONTEXT *pub, NCRYPT_KEY_HANDLE *key);
/* Find the context's private key (see fake_cert_key): 0 and *out filled, or -1 when the context has no
 * usable key (no property 78, and property 2 absent or naming a key NCrypt cannot open). Pair every
 * success with fakewin_cert_release_key. */
int fakewin_cert_acquire_key(const CERT_CONTEXT *pub, fake_cert_key *out);
void fakewin_cert_release_key(fake_cert_key *key);
/* A malloc'd string naming the key fakewin_cert_acquire_key would use (same string = same key), for
 * matching pooled connections; NULL when the context has no key or on allocation failure. */
char *fakewin_cert_key_identity(const CERT_CONTEXT *pub);

#endif /* FAKE_CRYPT32_H */
