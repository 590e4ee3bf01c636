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
    NCRYPT_KEY_HANDLE key; /* CERT_NCRYPT_KEY_HANDLE_PROP_ID, borrowed */
} fake_cert_context;

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

#endif /* FAKE_CRYPT32_H */
