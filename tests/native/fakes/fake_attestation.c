/* A Linux stand-in for AttestationClientLib.dll (PROTOCOL.md section 4): cdecl, ANSI strings.
 *
 * Like the real library it is process-global: InitAttestationLib twice without Uninit is an error, which
 * lets the tests prove the binding serialises it. The "ok" token is an unsigned JWT whose payload carries
 * `keyguard_spki_sha256` (base64url SHA-256 of the key's DER SubjectPublicKeyInfo), the claim the
 * emulator checks against the CSR's key.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "fakewin.h"

/* BEGIN PYTHON CDEF
void FakeAttest_Reset(void);
void FakeAttest_SetMode(int mode);
void FakeAttest_SetLifetime(int seconds);
void FakeAttest_SetDelayMs(int ms);
int FakeAttest_Calls(void);
int FakeAttest_Initialized(void);
END PYTHON CDEF */

typedef void (*AttestationLogFunc)(void *ctx, const char *tag, int level, const char *func, int line,
                                   const char *msg);
typedef struct {
    AttestationLogFunc Log;
    void *Ctx;
} AttestationLogInfo;

enum { MODE_OK = 0, MODE_FAIL = 1, MODE_EMPTY = 2, MODE_HTTP_FAIL = 3, MODE_NULL = 4 };

#define RC_INVALID_ARGUMENT (-1)
#define RC_NOT_INITIALIZED (-2)
#define RC_ALREADY_INITIALIZED (-3)
#define RC_BAD_KEY (-4)
#define RC_HTTP_FAILED (-5)
#define RC_ATTESTATION_FAILED (-6)

static const char KIND_LIB[] = "attest.lib";
static const char KIND_TOKEN[] = "attest.token";

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static AttestationLogInfo g_log;
static int g_initialized;
static int g_mode = MODE_OK;
static int g_lifetime = 3600;
static int g_delay_ms;
static int g_calls;

static void log_msg(const char *func, int line, const char *msg) {
    if (g_log.Log != NULL) g_log.Log(g_log.Ctx, "fakeattest", 1, func, line, msg);
}

static char *b64url(const unsigned char *in, size_t len) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(len * 4 / 3 + 4);
    if (out == NULL) return NULL;
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
    }
    out[o] = 0;
    return out;
}

static char *b64url_str(const char *s) { return b64url((const unsigned char *)s, strlen(s)); }

/* base64url(SHA-256(DER SubjectPublicKeyInfo)) without padding */
static char *spki_sha256(EVP_PKEY *pkey) {
    unsigned char *der = NULL, digest[SHA256_DIGEST_LENGTH];
    int len = i2d_PUBKEY(pkey, &der);
    if (len <= 0) return NULL;
    SHA256(der, (size_t)len, digest);
    OPENSSL_free(der);
    return b64url(digest, sizeof digest);
}

static char *make_token(EVP_PKEY *pkey, const char *endpoint) {
    char *spki = spki_sha256(pkey);
    if (spki == NULL) return NULL;
    long now = (long)time(NULL);
    char payload[1024];
    snprintf(payload, sizeof payload,
             "{\"iss\": \"%.200s\", \"iat\": %ld, \"exp\": %ld, \"keyguard_spki_sha256\": \"%s\", "
             "\"x-ms-attestation-type\": \"keyguard\"}",
             endpoint, now, now + g_lifetime, spki);
    free(spki);
    char *h = b64url_str("{\"alg\": \"none\", \"typ\": \"JWT\"}");
    char *p = b64url_str(payload);
    char *s = b64url_str("fake-attestation-signature");
    char *token = NULL;
    if (h != NULL && p != NULL && s != NULL) {
        size_t n = strlen(h) + strlen(p) + strlen(s) + 3;
        token = malloc(n);
        if (token != NULL) snprintf(token, n, "%s.%s.%s", h, p, s);
    }
    free(h);
    free(p);
    free(s);
    return token;
}

FAKEWIN_EXPORT int InitAttestationLib(AttestationLogInfo *info) {
    pthread_mutex_lock(&g_lock);
    int rc = 0;
    if (info == NULL || info->Log == NULL) {
        rc = RC_INVALID_ARGUMENT; /* the log callback is required */
    } else if (g_initialized) {
        rc = RC_ALREADY_INITIALIZED;
    } else {
        g_log = *info;
        g_initialized = 1;
        fakewin_handle_add(KIND_LIB, &g_initialized);
        log_msg(__func__, __LINE__, "attestation library initialized");
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

FAKEWIN_EXPORT int AttestKeyGuardImportKey(const char *endpoint, const char *authToken, const char *clientPayload,
                                           void *keyHandle, char **token, const char *clientId) {
    pthread_mutex_lock(&g_lock);
    g_calls++;
    int mode = g_mode, delay = g_delay_ms, rc = 0;
    if (!g_initialized) {
        rc = RC_NOT_INITIALIZED;
    } else if (endpoint == NULL || authToken == NULL || clientPayload == NULL || token == NULL || clientId == NULL ||
               strcmp(clientPayload, "{}") != 0) {
        rc = RC_INVALID_ARGUMENT;
    }
    pthread_mutex_unlock(&g_lock);
    if (rc != 0) return rc;
    *token = NULL;
    if (delay > 0) usleep((useconds_t)delay * 1000);
    EVP_PKEY *pkey = fakewin_ncrypt_pkey((NCRYPT_KEY_HANDLE)keyHandle);
    if (pkey == NULL) return RC_BAD_KEY;
    log_msg(__func__, __LINE__, "attesting a KeyGuard key");
    switch (mode) {
    case MODE_FAIL:
        log_msg(__func__, __LINE__, "attestation service rejected the evidence");
        return RC_ATTESTATION_FAILED;
    case MODE_HTTP_FAIL:
        log_msg(__func__, __LINE__, "HTTP request to the attestation service failed");
        return RC_HTTP_FAILED;
    case MODE_NULL:
        return 0;
    case MODE_EMPTY:
        *token = strdup("");
        break;
    default:
        *token = make_token(pkey, endpoint);
        break;
    }
    if (*token == NULL) return RC_ATTESTATION_FAILED;
    fakewin_handle_add(KIND_TOKEN, *token);
    return 0;
}

FAKEWIN_EXPORT void FreeAttestationToken(char *token) {
    if (token == NULL) return;
    if (fakewin_handle_remove(KIND_TOKEN, token) == 0) free(token);
}

FAKEWIN_EXPORT void UninitAttestationLib(void) {
    pthread_mutex_lock(&g_lock);
    if (g_initialized) {
        g_initialized = 0;
        memset(&g_log, 0, sizeof g_log);
        fakewin_handle_remove(KIND_LIB, &g_initialized);
    }
    pthread_mutex_unlock(&g_lock);
}

/* ---- test controls ---- */

FAKEWIN_EXPORT void FakeAttest_Reset(void) {
    pthread_mutex_lock(&g_lock);
    g_mode = MODE_OK;
    g_lifetime = 3600;
    g_delay_ms = 0;
    g_calls = 0;
    pthread_mutex_unlock(&g_lock);
}

/* 0 ok, 1 fail (-6), 2 empty token with rc 0, 3 http_fail (-5), 4 NULL token with rc 0 */
FAKEWIN_EXPORT void FakeAttest_SetMode(int mode) {
    pthread_mutex_lock(&g_lock);
    g_mode = mode;
    pthread_mutex_unlock(&g_lock);
}

FAKEWIN_EXPORT void FakeAttest_SetLifetime(int seconds) {
    pthread_mutex_lock(&g_lock);
    g_lifetime = seconds;
    pthread_mutex_unlock(&g_lock);
}

/* Slow the call down so concurrent callers pile up (single-flight tests). */
FAKEWIN_EXPORT void FakeAttest_SetDelayMs(int ms) {
    pthread_mutex_lock(&g_lock);
    g_delay_ms = ms;
    pthread_mutex_unlock(&g_lock);
}

FAKEWIN_EXPORT int FakeAttest_Calls(void) {
    pthread_mutex_lock(&g_lock);
    int n = g_calls;
    pthread_mutex_unlock(&g_lock);
    return n;
}

FAKEWIN_EXPORT int FakeAttest_Initialized(void) {
    pthread_mutex_lock(&g_lock);
    int n = g_initialized;
    pthread_mutex_unlock(&g_lock);
    return n;
}
