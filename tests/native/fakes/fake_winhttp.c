/* Linux stand-in for the winhttp.dll subset the bindings use: synchronous HTTP/1.1 over a real TLS
 * connection (POSIX sockets + OpenSSL), with the client certificate taken from a crypt32 context and
 * its private key from the fake NCrypt key the context carries: the handle attached as
 * CERT_NCRYPT_KEY_HANDLE_PROP_ID, or else the persisted key named by CERT_KEY_PROV_INFO_PROP_ID, which is
 * opened by name (NCryptOpenStorageProvider + NCryptOpenKey) for the handshake and released after it.
 *
 * What it keeps from Windows:
 * - Handles: session (WinHttpOpen) > connect (WinHttpConnect) > request (WinHttpOpenRequest); each is a
 *   live handle ("winhttp.session", "winhttp.connect", "winhttp.request"); a parent may be closed before
 *   its children (they keep it alive internally).
 * - The server certificate is checked against the "machine root store", simulated by the PEM file named
 *   by the environment variable FAKE_WINHTTP_TRUSTED_CA_FILE (no variable = an empty store), with the
 *   host name checked (SSL_set1_host) and SNI sent. SECURITY_FLAG_IGNORE_UNKNOWN_CA relaxes only the
 *   chain-to-root check; names and dates are still checked.
 * - WINHTTP_CALLBACK_STATUS_SENDING_REQUEST is delivered after the handshake and before a byte of the
 *   request is written; WINHTTP_OPTION_SERVER_CERT_CONTEXT works from then on. A callback that closes
 *   the request handle cancels it: WinHttpSendRequest fails with ERROR_WINHTTP_OPERATION_CANCELLED and
 *   nothing is sent. WINHTTP_CALLBACK_STATUS_SECURE_FAILURE reports the certificate error flags.
 * - A server asking for a client certificate when none was set -> ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED.
 * - Keep-alive: a connection whose response was read to the end goes back to its connect handle's pool
 *   and is reused by the next request with the same client certificate and security flags.
 * - Timeouts (ms; 0 or -1 = infinite): connect by a non-blocking connect + poll, send/receive by
 *   SO_SNDTIMEO/SO_RCVTIMEO; expiry -> ERROR_WINHTTP_TIMEOUT.
 * - WINHTTP_ACCESS_TYPE_NAMED_PROXY tunnels through the proxy with CONNECT. Whether real WinHTTP delivers
 *   SENDING_REQUEST for the CONNECT (before TLS exists) is not documented: FakeWinHttp_SetPreTlsNotify
 *   makes the fake do so (1: once before the tunnel, then after TLS as usual; 2: only before the tunnel).
 * - A status line without a reason phrase (as over HTTP/2) has no WINHTTP_QUERY_STATUS_TEXT:
 *   ERROR_WINHTTP_HEADER_NOT_FOUND.
 * - Two-pass WinHttpQueryHeaders (ERROR_INSUFFICIENT_BUFFER with the byte size needed).
 *
 * BEGIN PYTHON CDEF
 * int FakeWinHttp_Reset(void);
 * int FakeWinHttp_ConnectionsOpened(void);
 * int FakeWinHttp_RequestsSent(void);
 * void FakeWinHttp_SetPreTlsNotify(int mode);
 * int FakeWinHttp_LastAccessType(void);
 * END PYTHON CDEF
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "fake_crypt32.h"

/* ---- winerror.h / winhttp.h values ---- */
#define ERROR_INVALID_HANDLE 6
#define ERROR_NOT_SUPPORTED 50
#define ERROR_INVALID_PARAMETER 87
#define ERROR_INSUFFICIENT_BUFFER 122
#define ERROR_WINHTTP_TIMEOUT 12002
#define ERROR_WINHTTP_INTERNAL_ERROR 12004
#define ERROR_WINHTTP_INVALID_URL 12005
#define ERROR_WINHTTP_NAME_NOT_RESOLVED 12007
#define ERROR_WINHTTP_INVALID_OPTION 12009
#define ERROR_WINHTTP_OPERATION_CANCELLED 12017
#define ERROR_WINHTTP_INCORRECT_HANDLE_TYPE 12018
#define ERROR_WINHTTP_INCORRECT_HANDLE_STATE 12019
#define ERROR_WINHTTP_CANNOT_CONNECT 12029
#define ERROR_WINHTTP_CONNECTION_ERROR 12030
#define ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED 12044
#define ERROR_WINHTTP_HEADER_NOT_FOUND 12150
#define ERROR_WINHTTP_INVALID_SERVER_RESPONSE 12152
#define ERROR_WINHTTP_SECURE_FAILURE 12175
#define ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY 12185

#define WINHTTP_ACCESS_TYPE_DEFAULT_PROXY 0
#define WINHTTP_ACCESS_TYPE_NO_PROXY 1
#define WINHTTP_ACCESS_TYPE_NAMED_PROXY 3
#define WINHTTP_ACCESS_TYPE_AUTOMATIC_PROXY 4
#define WINHTTP_FLAG_ASYNC 0x10000000
#define WINHTTP_FLAG_SECURE 0x00800000

#define WINHTTP_OPTION_SECURITY_FLAGS 31
#define WINHTTP_OPTION_CLIENT_CERT_CONTEXT 47
#define WINHTTP_OPTION_DISABLE_FEATURE 63
#define WINHTTP_OPTION_SERVER_CERT_CONTEXT 78
#define WINHTTP_OPTION_SECURE_PROTOCOLS 84

#define SECURITY_FLAG_IGNORE_UNKNOWN_CA 0x00000100
#define SECURITY_FLAG_IGNORE_CERT_DATE_INVALID 0x00002000
#define SECURITY_FLAG_IGNORE_CERT_CN_INVALID 0x00001000

#define WINHTTP_CALLBACK_STATUS_SENDING_REQUEST 0x00000010
#define WINHTTP_CALLBACK_STATUS_SECURE_FAILURE 0x00010000
#define WINHTTP_CALLBACK_STATUS_FLAG_INVALID_CERT 0x00000002
#define WINHTTP_CALLBACK_STATUS_FLAG_INVALID_CA 0x00000008
#define WINHTTP_CALLBACK_STATUS_FLAG_CERT_CN_INVALID 0x00000010
#define WINHTTP_CALLBACK_STATUS_FLAG_CERT_DATE_INVALID 0x00000020
#define WINHTTP_CALLBACK_STATUS_FLAG_SECURITY_CHANNEL_ERROR 0x80000000

#define WINHTTP_QUERY_VERSION 18
#define WINHTTP_QUERY_STATUS_CODE 19
#define WINHTTP_QUERY_STATUS_TEXT 20
#define WINHTTP_QUERY_RAW_HEADERS_CRLF 22
#define WINHTTP_QUERY_CUSTOM 65535
#define WINHTTP_QUERY_FLAG_NUMBER 0x20000000
#define WINHTTP_QUERY_MODIFIER_FLAGS_MASK 0xF0000000

#define WINHTTP_ADDREQ_FLAG_REPLACE 0x80000000

typedef void(WINAPI *WINHTTP_STATUS_CALLBACK)(HINTERNET, DWORD_PTR, DWORD, LPVOID, DWORD);
#define WINHTTP_INVALID_STATUS_CALLBACK ((WINHTTP_STATUS_CALLBACK)(intptr_t)-1)

#define MAX_HEADER_BLOCK (64 * 1024)

static const char *const KIND_SESSION = "winhttp.session";
static const char *const KIND_CONNECT = "winhttp.connect";
static const char *const KIND_REQUEST = "winhttp.request";

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* refcounts, pools, counters */
static int g_connections_opened, g_requests_sent;
static int g_pre_tls_notify; /* FakeWinHttp_SetPreTlsNotify */
static int g_last_access = -1; /* dwAccessType of the latest WinHttpOpen */

/* ---- handles ---- */

typedef struct {
    int resolve, connect, send, receive; /* ms; <= 0 = infinite */
} timeouts;

typedef struct callback_slot {
    WINHTTP_STATUS_CALLBACK fn;
    DWORD flags;
} callback_slot;

typedef struct session {
    int refs;
    char *agent;
    DWORD access;
    char *proxy_host;
    char proxy_port[8];
    timeouts to;
    callback_slot cb;
} session;

typedef struct conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    /* identity the connection was made with; reuse needs the same */
    unsigned char *client_der;
    size_t client_der_len;
    char *client_key_id; /* fakewin_cert_key_identity of the certificate context */
    DWORD sec_flags;
    /* what happened during the handshake */
    int verify_error;
    int cert_requested;
    /* the server's certificates, leaf first */
    unsigned char **peer_der;
    size_t *peer_len;
    size_t peer_count;
    /* bytes read from the wire, not consumed yet */
    unsigned char *rbuf;
    size_t rlen, rcap;
    struct conn *next;
} conn;

typedef struct connect_h {
    int refs;
    session *s;
    char *host;
    INTERNET_PORT port;
    callback_slot cb;
    conn *idle;
} connect_h;

enum { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE };
enum { CH_SIZE, CH_DATA, CH_DATA_CRLF, CH_TRAILER };
enum { ST_NEW, ST_SENT, ST_RESPONSE };

typedef struct request {
    connect_h *c;
    int closed, busy;
    char *verb, *path;
    DWORD flags;
    timeouts to;
    char *headers; /* accumulated "Name: value\r\n" lines */
    size_t headers_len;
    const CERT_CONTEXT *client_cert;
    int client_cert_set; /* 1 = set (client_cert may be NULL = "no certificate") */
    DWORD sec_flags;
    callback_slot cb;
    DWORD_PTR context;
    conn *k;
    /* copy of the server's chain, so the option still works after the connection went back to the pool */
    unsigned char **peer_der;
    size_t *peer_len;
    size_t peer_count;
    int state;
    /* response */
    DWORD status;
    char *version, *reason, *raw_headers;
    int mode, chunk_state, body_done, keep_alive;
    unsigned long long remaining;
    unsigned char *dbuf;
    size_t dlen, doff, dcap;
} request;

static BOOL fail(DWORD code) {
    SetLastError(code);
    return FALSE;
}

static void *fail_null(DWORD code) {
    SetLastError(code);
    return NULL;
}

static session *as_session(HINTERNET h) { return fakewin_handle_live(KIND_SESSION, h) ? h : NULL; }
static connect_h *as_connect(HINTERNET h) { return fakewin_handle_live(KIND_CONNECT, h) ? h : NULL; }
static request *as_request(HINTERNET h) { return fakewin_handle_live(KIND_REQUEST, h) ? h : NULL; }
static int is_handle(HINTERNET h) { return as_session(h) || as_connect(h) || as_request(h); }

static void session_release(session *s) {
    pthread_mutex_lock(&g_lock);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&g_lock);
    if (!last) return;
    free(s->agent);
    free(s->proxy_host);
    free(s);
}

static void peer_free(unsigned char **der, size_t *len, size_t count) {
    for (size_t i = 0; i < count; i++) free(der[i]);
    free(der);
    free(len);
}

static void conn_free(conn *k) {
    if (k == NULL) return;
    if (k->ssl) {
        SSL_shutdown(k->ssl); /* best effort close_notify; never blocks long: the socket has timeouts */
        SSL_free(k->ssl);
    }
    if (k->ctx) SSL_CTX_free(k->ctx);
    if (k->fd >= 0) close(k->fd);
    free(k->client_der);
    free(k->client_key_id);
    peer_free(k->peer_der, k->peer_len, k->peer_count);
    free(k->rbuf);
    free(k);
}

static void connect_release(connect_h *c) {
    pthread_mutex_lock(&g_lock);
    int last = --c->refs == 0;
    conn *idle = last ? c->idle : NULL;
    if (last) c->idle = NULL;
    pthread_mutex_unlock(&g_lock);
    if (!last) return;
    while (idle) {
        conn *next = idle->next;
        conn_free(idle);
        idle = next;
    }
    session_release(c->s);
    free(c->host);
    free(c);
}

static void response_reset(request *r) {
    free(r->version);
    free(r->reason);
    free(r->raw_headers);
    free(r->dbuf);
    r->version = r->reason = r->raw_headers = NULL;
    r->dbuf = NULL;
    r->dlen = r->doff = r->dcap = 0;
    r->status = 0;
    r->mode = BODY_NONE;
    r->body_done = 0;
    r->keep_alive = 0;
    r->remaining = 0;
    r->chunk_state = CH_SIZE;
}

/* Hand the connection back to the pool when reusable, else close it. */
static void request_drop_conn(request *r, int reusable) {
    conn *k = r->k;
    r->k = NULL;
    if (k == NULL) return;
    if (reusable && k->rlen == 0) {
        pthread_mutex_lock(&g_lock);
        k->next = r->c->idle;
        r->c->idle = k;
        pthread_mutex_unlock(&g_lock);
    } else {
        conn_free(k);
    }
}

static void request_free(request *r) {
    request_drop_conn(r, r->state == ST_RESPONSE && r->body_done && r->keep_alive);
    if (r->client_cert) CertFreeCertificateContext(r->client_cert);
    peer_free(r->peer_der, r->peer_len, r->peer_count);
    response_reset(r);
    free(r->verb);
    free(r->path);
    free(r->headers);
    connect_h *c = r->c;
    free(r);
    connect_release(c);
}

FAKEWIN_EXPORT BOOL WINAPI WinHttpCloseHandle(HINTERNET h) {
    session *s = as_session(h);
    connect_h *c = as_connect(h);
    request *r = as_request(h);
    if (!s && !c && !r) {
        fakewin_handle_remove(KIND_REQUEST, h); /* counts the bad free */
        return fail(ERROR_INVALID_HANDLE);
    }
    if (s) {
        fakewin_handle_remove(KIND_SESSION, s);
        session_release(s);
    } else if (c) {
        fakewin_handle_remove(KIND_CONNECT, c);
        connect_release(c);
    } else {
        fakewin_handle_remove(KIND_REQUEST, r);
        r->closed = 1;
        if (!r->busy) request_free(r); /* else the call in progress (a callback closed it) frees it */
    }
    return TRUE;
}

/* ---- session / connect / request creation ---- */

static int parse_proxy(const char *spec, session *s) {
    /* "[scheme=][http://]host[:port]" -> host, port (default 80); the first entry of a list */
    char *copy = strdup(spec), *p = copy;
    if (copy == NULL) return -1;
    char *end = strpbrk(p, " ;");
    if (end) *end = 0;
    char *eq = strchr(p, '=');
    if (eq) p = eq + 1;
    if (strncasecmp(p, "http://", 7) == 0) p += 7;
    char *slash = strchr(p, '/');
    if (slash) *slash = 0;
    char *colon = strrchr(p, ':');
    snprintf(s->proxy_port, sizeof s->proxy_port, "%s", colon ? colon + 1 : "80");
    if (colon) *colon = 0;
    s->proxy_host = strdup(p);
    free(copy);
    return s->proxy_host && *s->proxy_host ? 0 : -1;
}

FAKEWIN_EXPORT HINTERNET WINAPI WinHttpOpen(LPCWSTR agent, DWORD access, LPCWSTR proxy, LPCWSTR bypass, DWORD flags) {
    (void)bypass;
    if (flags & WINHTTP_FLAG_ASYNC) return fail_null(ERROR_NOT_SUPPORTED); /* the fake is synchronous */
    if (access != WINHTTP_ACCESS_TYPE_DEFAULT_PROXY && access != WINHTTP_ACCESS_TYPE_NO_PROXY &&
        access != WINHTTP_ACCESS_TYPE_NAMED_PROXY && access != WINHTTP_ACCESS_TYPE_AUTOMATIC_PROXY)
        return fail_null(ERROR_INVALID_PARAMETER);
    session *s = calloc(1, sizeof *s);
    if (s == NULL) return fail_null(ERROR_NOT_ENOUGH_MEMORY);
    s->refs = 1;
    s->access = access;
    pthread_mutex_lock(&g_lock);
    g_last_access = (int)access;
    pthread_mutex_unlock(&g_lock);
    s->agent = fakewin_wcs_to_utf8(agent);
    s->to = (timeouts){0, 60000, 30000, 30000};
    if (access == WINHTTP_ACCESS_TYPE_NAMED_PROXY) {
        char *spec = fakewin_wcs_to_utf8(proxy);
        int bad = spec == NULL || parse_proxy(spec, s) != 0;
        free(spec);
        if (bad) {
            session_release(s);
            return fail_null(ERROR_INVALID_PARAMETER);
        }
    }
    fakewin_handle_add(KIND_SESSION, s);
    return s;
}

FAKEWIN_EXPORT HINTERNET WINAPI WinHttpConnect(HINTERNET hs, LPCWSTR server, INTERNET_PORT port, DWORD reserved) {
    session *s = as_session(hs);
    if (s == NULL) return fail_null(is_handle(hs) ? ERROR_WINHTTP_INCORRECT_HANDLE_TYPE : ERROR_INVALID_HANDLE);
    if (reserved != 0 || server == NULL || server[0] == 0) return fail_null(ERROR_INVALID_PARAMETER);
    connect_h *c = calloc(1, sizeof *c);
    if (c == NULL) return fail_null(ERROR_NOT_ENOUGH_MEMORY);
    c->refs = 1;
    c->host = fakewin_wcs_to_utf8(server);
    c->port = port;
    c->cb = s->cb;
    pthread_mutex_lock(&g_lock);
    s->refs++;
    pthread_mutex_unlock(&g_lock);
    c->s = s;
    fakewin_handle_add(KIND_CONNECT, c);
    return c;
}

FAKEWIN_EXPORT HINTERNET WINAPI WinHttpOpenRequest(HINTERNET hc, LPCWSTR verb, LPCWSTR object, LPCWSTR version,
                                                   LPCWSTR referrer, LPCWSTR *accept, DWORD flags) {
    (void)version, (void)referrer, (void)accept;
    connect_h *c = as_connect(hc);
    if (c == NULL) return fail_null(is_handle(hc) ? ERROR_WINHTTP_INCORRECT_HANDLE_TYPE : ERROR_INVALID_HANDLE);
    request *r = calloc(1, sizeof *r);
    if (r == NULL) return fail_null(ERROR_NOT_ENOUGH_MEMORY);
    r->verb = verb ? fakewin_wcs_to_utf8(verb) : strdup("GET");
    r->path = object && object[0] ? fakewin_wcs_to_utf8(object) : strdup("/");
    if (r->path[0] != '/' && strcmp(r->path, "*") != 0) {
        free(r->verb);
        free(r->path);
        free(r);
        return fail_null(ERROR_WINHTTP_INVALID_URL);
    }
    r->flags = flags;
    r->to = c->s->to;
    r->cb = c->cb;
    r->chunk_state = CH_SIZE;
    pthread_mutex_lock(&g_lock);
    c->refs++;
    pthread_mutex_unlock(&g_lock);
    r->c = c;
    fakewin_handle_add(KIND_REQUEST, r);
    return r;
}

FAKEWIN_EXPORT BOOL WINAPI WinHttpSetTimeouts(HINTERNET h, int resolve, int connect, int send, int receive) {
    if (resolve < -1 || connect < -1 || send < -1 || receive < -1) return fail(ERROR_INVALID_PARAMETER);
    timeouts to = {resolve, connect, send, receive};
    session *s = as_session(h);
    request *r = as_request(h);
    if (s) s->to = to;
    else if (r) r->to = to;
    else return fail(is_handle(h) ? ERROR_WINHTTP_INCORRECT_HANDLE_TYPE : ERROR_INVALID_HANDLE);
    return TRUE;
}

FAKEWIN_EXPORT WINHTTP_STATUS_CALLBACK WINAPI WinHttpSetStatusCallback(HINTERNET h, WINHTTP_STATUS_CALLBACK fn,
                                                                       DWORD flags, DWORD_PTR reserved) {
    (void)reserved;
    callback_slot *slot = NULL;
    session *s = as_session(h);
    connect_h *c = as_connect(h);
    request *r = as_request(h);
    if (s) slot = &s->cb;
    else if (c) slot = &c->cb;
    else if (r) slot = &r->cb;
    if (slot == NULL) {
        SetLastError(ERROR_INVALID_HANDLE);
        return WINHTTP_INVALID_STATUS_CALLBACK;
    }
    WINHTTP_STATUS_CALLBACK previous = slot->fn;
    slot->fn = fn;
    slot->flags = fn ? flags : 0;
    return previous;
}

/* ---- options ---- */

FAKEWIN_EXPORT BOOL WINAPI WinHttpSetOption(HINTERNET h, DWORD option, LPVOID buffer, DWORD len) {
    if (!is_handle(h)) return fail(ERROR_INVALID_HANDLE);
    request *r = as_request(h);
    switch (option) {
    case WINHTTP_OPTION_CLIENT_CERT_CONTEXT: {
        if (r == NULL) return fail(ERROR_WINHTTP_INCORRECT_HANDLE_TYPE);
        const CERT_CONTEXT *ctx = buffer;
        if (ctx != NULL) {
            if (len < sizeof(CERT_CONTEXT) || fakewin_cert_from_public(ctx) == NULL)
                return fail(ERROR_INVALID_PARAMETER);
            ctx = CertDuplicateCertificateContext(ctx); /* WinHTTP keeps its own reference */
        }
        if (r->client_cert) CertFreeCertificateContext(r->client_cert);
        r->client_cert = ctx;
        r->client_cert_set = 1;
        return TRUE;
    }
    case WINHTTP_OPTION_SECURITY_FLAGS:
        if (r == NULL) return fail(ERROR_WINHTTP_INCORRECT_HANDLE_TYPE);
        if (buffer == NULL || len != sizeof(DWORD)) return fail(ERROR_INVALID_PARAMETER);
        r->sec_flags = *(DWORD *)buffer;
        return TRUE;
    case WINHTTP_OPTION_DISABLE_FEATURE:
    case WINHTTP_OPTION_SECURE_PROTOCOLS:
        if (buffer == NULL || len != sizeof(DWORD)) return fail(ERROR_INVALID_PARAMETER);
        return TRUE; /* accepted; the fake never redirects, keeps cookies or speaks old protocols */
    default:
        return fail(ERROR_WINHTTP_INVALID_OPTION);
    }
}

FAKEWIN_EXPORT BOOL WINAPI WinHttpQueryOption(HINTERNET h, DWORD option, LPVOID buffer, DWORD *len) {
    if (!is_handle(h)) return fail(ERROR_INVALID_HANDLE);
    if (len == NULL) return fail(ERROR_INVALID_PARAMETER);
    request *r = as_request(h);
    switch (option) {
    case WINHTTP_OPTION_SERVER_CERT_CONTEXT: {
        if (r == NULL) return fail(ERROR_WINHTTP_INCORRECT_HANDLE_TYPE);
        if (r->peer_count == 0) return fail(ERROR_WINHTTP_INCORRECT_HANDLE_STATE);
        if (buffer == NULL || *len < sizeof(void *)) {
            *len = sizeof(void *);
            return fail(ERROR_INSUFFICIENT_BUFFER);
        }
        const CERT_CONTEXT *ctx =
            fakewin_cert_new_in_store((const unsigned char *const *)r->peer_der, r->peer_len, r->peer_count);
        if (ctx == NULL) return fail(ERROR_NOT_ENOUGH_MEMORY);
        memcpy(buffer, &ctx, sizeof ctx);
        *len = sizeof(void *);
        return TRUE;
    }
    case WINHTTP_OPTION_SECURITY_FLAGS:
        if (r == NULL) return fail(ERROR_WINHTTP_INCORRECT_HANDLE_TYPE);
        if (buffer == NULL || *len < sizeof(DWORD)) {
            *len = sizeof(DWORD);
            return fail(ERROR_INSUFFICIENT_BUFFER);
        }
        memcpy(buffer, &r->sec_flags, sizeof(DWORD));
        *len = sizeof(DWORD);
        return TRUE;
    default:
        return fail(ERROR_WINHTTP_INVALID_OPTION);
    }
}

/* ---- request headers ---- */

static int append(char **buf, size_t *len, const char *data, size_t n) {
    char *grown = realloc(*buf, *len + n + 1);
    if (grown == NULL) return -1;
    memcpy(grown + *len, data, n);
    *len += n;
    grown[*len] = 0;
    *buf = grown;
    return 0;
}

/* Find header `name` in a "Name: value\r\n..." block; returns the line start or NULL. */
static const char *find_header_line(const char *block, const char *name) {
    size_t n = strlen(name);
    for (const char *p = block; p && *p;) {
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') return p;
        p = strstr(p, "\r\n");
        if (p) p += 2;
    }
    return NULL;
}

static void remove_header(request *r, const char *name) {
    if (r->headers == NULL) return;
    const char *line;
    while ((line = find_header_line(r->headers, name)) != NULL) {
        const char *end = strstr(line, "\r\n");
        size_t cut = end ? (size_t)(end + 2 - line) : strlen(line);
        size_t at = (size_t)(line - r->headers);
        memmove(r->headers + at, r->headers + at + cut, r->headers_len - at - cut + 1);
        r->headers_len -= cut;
    }
}

/* Add CRLF-separated header lines; rejects lines without a colon. */
static DWORD add_headers(request *r, LPCWSTR headers, DWORD wlen, int replace) {
    if (headers == NULL) return 0;
    size_t n = wlen == (DWORD)-1 ? fakewin_wcslen(headers) : wlen;
    WCHAR *copy = malloc((n + 1) * sizeof(WCHAR));
    if (copy == NULL) return ERROR_NOT_ENOUGH_MEMORY;
    memcpy(copy, headers, n * sizeof(WCHAR));
    copy[n] = 0;
    char *utf8 = fakewin_wcs_to_utf8(copy);
    free(copy);
    if (utf8 == NULL) return ERROR_NOT_ENOUGH_MEMORY;
    DWORD err = 0;
    for (char *line = utf8; line && *line && !err;) {
        char *end = strstr(line, "\r\n");
        if (end) *end = 0;
        if (*line) {
            char *colon = strchr(line, ':');
            if (colon == NULL || colon == line) {
                err = ERROR_INVALID_PARAMETER;
                break;
            }
            if (replace) {
                *colon = 0;
                remove_header(r, line);
                *colon = ':';
            }
            if (append(&r->headers, &r->headers_len, line, strlen(line)) || append(&r->headers, &r->headers_len, "\r\n", 2))
                err = ERROR_NOT_ENOUGH_MEMORY;
        }
        line = end ? end + 2 : NULL;
    }
    free(utf8);
    return err;
}

FAKEWIN_EXPORT BOOL WINAPI WinHttpAddRequestHeaders(HINTERNET h, LPCWSTR headers, DWORD len, DWORD modifiers) {
    request *r = as_request(h);
    if (r == NULL) return fail(is_handle(h) ? ERROR_WINHTTP_INCORRECT_HANDLE_TYPE : ERROR_INVALID_HANDLE);
    if (headers == NULL) return fail(ERROR_INVALID_PARAMETER);
    DWORD err = add_headers(r, headers, len, (modifiers & WINHTTP_ADDREQ_FLAG_REPLACE) != 0);
    return err ? fail(err) : TRUE;
}

/* ---- wire I/O ---- */

static void set_io_timeouts(int fd, const timeouts *to) {
    struct timeval rcv = {0, 0}, snd = {0, 0};
    if (to->receive > 0) rcv = (struct timeval){to->receive / 1000, (to->receive % 1000) * 1000};
    if (to->send > 0) snd = (struct timeval){to->send / 1000, (to->send % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof rcv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof snd);
}

static DWORD map_ssl_error(SSL *ssl, int ret, int saved_errno) {
    int e = SSL_get_error(ssl, ret);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return ERROR_WINHTTP_TIMEOUT;
    if (e == SSL_ERROR_SYSCALL && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)) return ERROR_WINHTTP_TIMEOUT;
    return ERROR_WINHTTP_CONNECTION_ERROR;
}

static DWORD conn_write(conn *k, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t w;
        if (k->ssl) {
            ERR_clear_error();
            errno = 0;
            int ret = SSL_write(k->ssl, p, n > 0x7FFFFFFF ? 0x7FFFFFFF : (int)n);
            if (ret <= 0) return map_ssl_error(k->ssl, ret, errno);
            w = ret;
        } else {
            w = send(k->fd, p, n, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR) continue;
                return errno == EAGAIN || errno == EWOULDBLOCK ? ERROR_WINHTTP_TIMEOUT : ERROR_WINHTTP_CONNECTION_ERROR;
            }
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read some bytes into k->rbuf; *got = 0 at end of stream. */
static DWORD conn_fill(conn *k, size_t *got) {
    if (k->rcap - k->rlen < 16384) {
        size_t cap = k->rcap ? k->rcap * 2 : 32768;
        unsigned char *grown = realloc(k->rbuf, cap);
        if (grown == NULL) return ERROR_NOT_ENOUGH_MEMORY;
        k->rbuf = grown;
        k->rcap = cap;
    }
    size_t room = k->rcap - k->rlen;
    for (;;) {
        if (k->ssl) {
            ERR_clear_error();
            errno = 0;
            int ret = SSL_read(k->ssl, k->rbuf + k->rlen, room > 0x7FFFFFFF ? 0x7FFFFFFF : (int)room);
            if (ret > 0) {
                k->rlen += (size_t)ret;
                *got = (size_t)ret;
                return 0;
            }
            int saved = errno;
            if (SSL_get_error(k->ssl, ret) == SSL_ERROR_ZERO_RETURN) {
                *got = 0;
                return 0;
            }
            return map_ssl_error(k->ssl, ret, saved);
        }
        ssize_t n = recv(k->fd, k->rbuf + k->rlen, room, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? ERROR_WINHTTP_TIMEOUT : ERROR_WINHTTP_CONNECTION_ERROR;
        k->rlen += (size_t)n;
        *got = (size_t)n;
        return 0;
    }
}

static void conn_consume(conn *k, size_t n) {
    memmove(k->rbuf, k->rbuf + n, k->rlen - n);
    k->rlen -= n;
}

/* An idle pooled connection is still usable if nothing (data or EOF) arrived while it sat idle. */
static int conn_alive(conn *k) {
    struct pollfd p = {k->fd, POLLIN, 0};
    if (poll(&p, 1, 0) == 0) return 1;
    if (k->ssl == NULL) return 0;
    int fl = fcntl(k->fd, F_GETFL);
    fcntl(k->fd, F_SETFL, fl | O_NONBLOCK);
    char b;
    ERR_clear_error();
    int ret = SSL_peek(k->ssl, &b, 1); /* consumes TLS 1.3 session tickets, sees data or close */
    int e = SSL_get_error(k->ssl, ret);
    fcntl(k->fd, F_SETFL, fl);
    return ret <= 0 && e == SSL_ERROR_WANT_READ;
}

static DWORD tcp_connect(const char *host, const char *port, int connect_ms, int *out_fd) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL) return ERROR_WINHTTP_NAME_NOT_RESOLVED;
    DWORD err = ERROR_WINHTTP_CANNOT_CONNECT;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            struct pollfd p = {fd, POLLOUT, 0};
            int pr;
            do pr = poll(&p, 1, connect_ms > 0 ? connect_ms : -1);
            while (pr < 0 && errno == EINTR);
            if (pr == 0) {
                close(fd);
                err = ERROR_WINHTTP_TIMEOUT;
                continue;
            }
            int so = 0;
            socklen_t sl = sizeof so;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl);
            rc = so == 0 ? 0 : -1;
        }
        if (rc != 0) {
            close(fd);
            continue;
        }
        fcntl(fd, F_SETFL, fl);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        *out_fd = fd;
        freeaddrinfo(res);
        return 0;
    }
    freeaddrinfo(res);
    return err;
}

/* CONNECT host:port through an HTTP proxy; the reply must be 2xx. */
static DWORD proxy_tunnel(conn *k, const char *host, unsigned port) {
    char line[1024];
    const char *open = strchr(host, ':') ? "[" : "", *close_ = strchr(host, ':') ? "]" : "";
    int n = snprintf(line, sizeof line, "CONNECT %s%s%s:%u HTTP/1.1\r\nHost: %s%s%s:%u\r\n\r\n", open, host, close_,
                     port, open, host, close_, port);
    if (n <= 0 || (size_t)n >= sizeof line) return ERROR_WINHTTP_INVALID_URL;
    DWORD err = conn_write(k, line, (size_t)n);
    if (err) return err;
    for (;;) {
        unsigned char *end = k->rlen >= 4 ? memmem(k->rbuf, k->rlen, "\r\n\r\n", 4) : NULL;
        if (end) {
            int ok = k->rlen > 12 && memcmp(k->rbuf, "HTTP/1.", 7) == 0 && k->rbuf[9] == '2';
            conn_consume(k, (size_t)(end + 4 - k->rbuf));
            return ok ? 0 : ERROR_WINHTTP_CANNOT_CONNECT;
        }
        if (k->rlen > MAX_HEADER_BLOCK) return ERROR_WINHTTP_INVALID_SERVER_RESPONSE;
        size_t got;
        err = conn_fill(k, &got);
        if (err) return err;
        if (got == 0) return ERROR_WINHTTP_CANNOT_CONNECT;
    }
}

static int is_unknown_ca(int err) {
    return err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY || err == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
           err == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT || err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
           err == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE || err == X509_V_ERR_CERT_UNTRUSTED;
}

static int is_date_error(int err) {
    return err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID;
}

static int is_name_error(int err) {
    return err == X509_V_ERR_HOSTNAME_MISMATCH || err == X509_V_ERR_IP_ADDRESS_MISMATCH;
}

static int verify_cb(int ok, X509_STORE_CTX *sctx) {
    if (ok) return 1;
    SSL *ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    conn *k = SSL_get_app_data(ssl);
    int err = X509_STORE_CTX_get_error(sctx);
    if ((k->sec_flags & SECURITY_FLAG_IGNORE_UNKNOWN_CA) && is_unknown_ca(err)) return 1;
    if ((k->sec_flags & SECURITY_FLAG_IGNORE_CERT_DATE_INVALID) && is_date_error(err)) return 1;
    if ((k->sec_flags & SECURITY_FLAG_IGNORE_CERT_CN_INVALID) && is_name_error(err)) return 1;
    if (k->verify_error == 0) k->verify_error = err;
    return 0;
}

static int client_cert_cb(SSL *ssl, X509 **x509, EVP_PKEY **pkey) {
    (void)x509, (void)pkey;
    conn *k = SSL_get_app_data(ssl);
    k->cert_requested = 1;
    return 0; /* no certificate (one that was set is sent without asking us) */
}

static DWORD secure_failure_flags(int verify_error) {
    if (is_unknown_ca(verify_error)) return WINHTTP_CALLBACK_STATUS_FLAG_INVALID_CA;
    if (is_date_error(verify_error)) return WINHTTP_CALLBACK_STATUS_FLAG_CERT_DATE_INVALID;
    if (is_name_error(verify_error)) return WINHTTP_CALLBACK_STATUS_FLAG_CERT_CN_INVALID;
    if (verify_error != 0) return WINHTTP_CALLBACK_STATUS_FLAG_INVALID_CERT;
    return WINHTTP_CALLBACK_STATUS_FLAG_SECURITY_CHANNEL_ERROR;
}

static void notify(request *r, DWORD status, void *info, DWORD len) {
    if (r->cb.fn && (r->cb.flags & status)) r->cb.fn(r, r->context, status, info, len);
}

static int host_is_ip(const char *host) {
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* The handshake, presenting the client certificate with `key` (NULL = no client certificate). */
static DWORD tls_handshake_with(request *r, conn *k, const char *host, const fake_cert_key *key) {
    k->ctx = SSL_CTX_new(TLS_client_method());
    if (k->ctx == NULL) return ERROR_WINHTTP_INTERNAL_ERROR;
    SSL_CTX_set_min_proto_version(k->ctx, TLS1_2_VERSION);
    const char *roots = getenv("FAKE_WINHTTP_TRUSTED_CA_FILE");
    if (roots && *roots) SSL_CTX_load_verify_locations(k->ctx, roots, NULL); /* unreadable = empty store */
    SSL_CTX_set_verify(k->ctx, SSL_VERIFY_PEER, verify_cb);
    SSL_CTX_set_client_cert_cb(k->ctx, client_cert_cb);
    k->ssl = SSL_new(k->ctx);
    if (k->ssl == NULL) return ERROR_WINHTTP_INTERNAL_ERROR;
    SSL_set_app_data(k->ssl, k);
    SSL_set_options(k->ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_set_fd(k->ssl, k->fd);
    if (!host_is_ip(host)) SSL_set_tlsext_host_name(k->ssl, host);
    SSL_set1_host(k->ssl, host);

    if (key != NULL) {
        EVP_PKEY *pkey = fakewin_ncrypt_pkey(key->key);
        if (pkey == NULL) return ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY;
        const unsigned char *p = r->client_cert->pbCertEncoded;
        X509 *x = d2i_X509(NULL, &p, r->client_cert->cbCertEncoded);
        if (x == NULL) return ERROR_WINHTTP_SECURE_FAILURE;
        int ok = SSL_use_certificate(k->ssl, x) == 1 && SSL_use_PrivateKey(k->ssl, pkey) == 1 &&
                 SSL_check_private_key(k->ssl) == 1;
        X509_free(x);
        if (!ok) return ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY; /* the key does not match the certificate */
        k->client_der = malloc(r->client_cert->cbCertEncoded);
        if (k->client_der == NULL) return ERROR_NOT_ENOUGH_MEMORY;
        memcpy(k->client_der, r->client_cert->pbCertEncoded, r->client_cert->cbCertEncoded);
        k->client_der_len = r->client_cert->cbCertEncoded;
        k->client_key_id = fakewin_cert_key_identity(r->client_cert);
        if (k->client_key_id == NULL) return ERROR_NOT_ENOUGH_MEMORY;
    }

    ERR_clear_error();
    errno = 0;
    int ret = SSL_connect(k->ssl);
    int saved = errno;
    if (ret != 1) {
        DWORD err = map_ssl_error(k->ssl, ret, saved);
        if (err == ERROR_WINHTTP_TIMEOUT) return err;
        if (k->verify_error != 0 || SSL_get_error(k->ssl, ret) == SSL_ERROR_SSL) {
            DWORD flags = secure_failure_flags(k->verify_error);
            notify(r, WINHTTP_CALLBACK_STATUS_SECURE_FAILURE, &flags, sizeof flags);
            return ERROR_WINHTTP_SECURE_FAILURE;
        }
        return err;
    }
    if (k->cert_requested && !r->client_cert_set) return ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED;

    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(k->ssl); /* client side: leaf first */
    int n = chain ? sk_X509_num(chain) : 0;
    if (n <= 0) return ERROR_WINHTTP_SECURE_FAILURE;
    k->peer_der = calloc((size_t)n, sizeof *k->peer_der);
    k->peer_len = calloc((size_t)n, sizeof *k->peer_len);
    if (k->peer_der == NULL || k->peer_len == NULL) return ERROR_NOT_ENOUGH_MEMORY;
    for (int i = 0; i < n; i++) {
        unsigned char *der = NULL;
        int len = i2d_X509(sk_X509_value(chain, i), &der);
        if (len <= 0) return ERROR_WINHTTP_SECURE_FAILURE;
        k->peer_der[i] = malloc((size_t)len);
        if (k->peer_der[i] == NULL) {
            OPENSSL_free(der);
            return ERROR_NOT_ENOUGH_MEMORY;
        }
        memcpy(k->peer_der[i], der, (size_t)len);
        OPENSSL_free(der);
        k->peer_len[i] = (size_t)len;
        k->peer_count = (size_t)i + 1;
    }
    return 0;
}

/* Schannel finds the key the way CryptAcquireCertificatePrivateKey does: property 78's handle, else the
 * key named by property 2, opened for this handshake only (the TLS session keeps what it needs). */
static DWORD tls_handshake(request *r, conn *k, const char *host) {
    if (r->client_cert == NULL) return tls_handshake_with(r, k, host, NULL);
    fake_cert_key key;
    if (fakewin_cert_acquire_key(r->client_cert, &key) != 0) return ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY;
    DWORD err = tls_handshake_with(r, k, host, &key);
    fakewin_cert_release_key(&key);
    return err;
}

/* `key_id`: fakewin_cert_key_identity of the request's certificate context (NULL without one). */
static int conn_matches(const conn *k, const request *r, const char *key_id) {
    if (k->sec_flags != r->sec_flags) return 0;
    const CERT_CONTEXT *cc = r->client_cert;
    if (cc == NULL) return k->client_der == NULL;
    if (key_id == NULL || k->client_key_id == NULL || strcmp(key_id, k->client_key_id) != 0) return 0;
    return k->client_der_len == cc->cbCertEncoded && memcmp(k->client_der, cc->pbCertEncoded, cc->cbCertEncoded) == 0;
}

static unsigned effective_port(const request *r) {
    if (r->c->port != 0) return r->c->port;
    return (r->flags & WINHTTP_FLAG_SECURE) ? 443 : 80;
}

/* Take a pooled connection made with the same identity, or open a new one. */
static DWORD request_connect(request *r) {
    connect_h *c = r->c;
    char *key_id = r->client_cert ? fakewin_cert_key_identity(r->client_cert) : NULL;
    for (;;) {
        pthread_mutex_lock(&g_lock);
        conn **pp = &c->idle, *k = NULL;
        for (; *pp; pp = &(*pp)->next) {
            if (conn_matches(*pp, r, key_id)) {
                k = *pp;
                *pp = k->next;
                k->next = NULL;
                break;
            }
        }
        pthread_mutex_unlock(&g_lock);
        if (k == NULL) break;
        if (conn_alive(k)) {
            set_io_timeouts(k->fd, &r->to);
            r->k = k;
            free(key_id);
            return 0;
        }
        conn_free(k);
    }
    free(key_id);

    conn *k = calloc(1, sizeof *k);
    if (k == NULL) return ERROR_NOT_ENOUGH_MEMORY;
    k->fd = -1;
    k->sec_flags = r->sec_flags;
    r->k = k;
    unsigned port = effective_port(r);
    char port_s[8];
    snprintf(port_s, sizeof port_s, "%u", port);
    session *s = c->s;
    int proxied = s->access == WINHTTP_ACCESS_TYPE_NAMED_PROXY && s->proxy_host != NULL;
    DWORD err = proxied ? tcp_connect(s->proxy_host, s->proxy_port, r->to.connect, &k->fd)
                        : tcp_connect(c->host, port_s, r->to.connect, &k->fd);
    if (err) return err;
    pthread_mutex_lock(&g_lock);
    g_connections_opened++;
    pthread_mutex_unlock(&g_lock);
    set_io_timeouts(k->fd, &r->to);
    if (proxied && g_pre_tls_notify) { /* SENDING_REQUEST for the CONNECT: no TLS, no server certificate yet */
        notify(r, WINHTTP_CALLBACK_STATUS_SENDING_REQUEST, NULL, 0);
        if (r->closed) return ERROR_WINHTTP_OPERATION_CANCELLED;
    }
    if (proxied && (err = proxy_tunnel(k, c->host, port)) != 0) return err;
    if (r->flags & WINHTTP_FLAG_SECURE) return tls_handshake(r, k, c->host);
    return 0;
}

static DWORD write_request(request *r, const void *body, DWORD body_len, DWORD total) {
    char *out = NULL;
    size_t len = 0;
    char line[512];
    unsigned port = effective_port(r);
    int secure = (r->flags & WINHTTP_FLAG_SECURE) != 0;
    int v6 = strchr(r->c->host, ':') != NULL;
    int ok = append(&out, &len, r->verb, strlen(r->verb)) == 0 && append(&out, &len, " ", 1) == 0 &&
             append(&out, &len, r->path, strlen(r->path)) == 0 &&
             append(&out, &len, " HTTP/1.1\r\nHost: ", 17) == 0 &&
             append(&out, &len, v6 ? "[" : "", v6) == 0 &&
             append(&out, &len, r->c->host, strlen(r->c->host)) == 0 && append(&out, &len, v6 ? "]" : "", v6) == 0;
    if (ok && port != (secure ? 443u : 80u)) {
        int n = snprintf(line, sizeof line, ":%u", port);
        ok = append(&out, &len, line, (size_t)n) == 0;
    }
    ok = ok && append(&out, &len, "\r\n", 2) == 0;
    const char *agent = r->c->s->agent;
    if (ok && agent && *agent && !find_header_line(r->headers, "User-Agent")) {
        ok = append(&out, &len, "User-Agent: ", 12) == 0 && append(&out, &len, agent, strlen(agent)) == 0 &&
             append(&out, &len, "\r\n", 2) == 0;
    }
    if (ok && r->headers) ok = append(&out, &len, r->headers, r->headers_len) == 0;
    int wants_length = total > 0 || strcmp(r->verb, "POST") == 0 || strcmp(r->verb, "PUT") == 0 ||
                       strcmp(r->verb, "PATCH") == 0;
    if (ok && wants_length && !find_header_line(r->headers, "Content-Length")) {
        int n = snprintf(line, sizeof line, "Content-Length: %u\r\n", (unsigned)total);
        ok = append(&out, &len, line, (size_t)n) == 0;
    }
    if (ok && !find_header_line(r->headers, "Connection")) ok = append(&out, &len, "Connection: Keep-Alive\r\n", 24) == 0;
    ok = ok && append(&out, &len, "\r\n", 2) == 0;
    if (ok && body_len) ok = append(&out, &len, body, body_len) == 0;
    DWORD err = ok ? conn_write(r->k, out, len) : ERROR_NOT_ENOUGH_MEMORY;
    free(out);
    if (!err) {
        pthread_mutex_lock(&g_lock);
        g_requests_sent++;
        pthread_mutex_unlock(&g_lock);
    }
    return err;
}

FAKEWIN_EXPORT BOOL WINAPI WinHttpSendRequest(HINTERNET h, LPCWSTR headers, DWORD headers_len, LPVOID optional,
                                              DWORD optional_len, DWORD total, DWORD_PTR context) {
    request *r = as_request(h);
    if (r == NULL) return fail(is_handle(h) ? ERROR_WINHTTP_INCORRECT_HANDLE_TYPE : ERROR_INVALID_HANDLE);
    if (total != optional_len || (optional_len && optional == NULL)) return fail(ERROR_INVALID_PARAMETER);
    if (r->state != ST_NEW) { /* re-sending: start over on a fresh exchange */
        request_drop_conn(r, r->state == ST_RESPONSE && r->body_done && r->keep_alive);
        response_reset(r);
        r->state = ST_NEW;
    }
    DWORD err = add_headers(r, headers, headers_len, 0);
    if (err) return fail(err);
    r->context = context;
    r->busy = 1;
    peer_free(r->peer_der, r->peer_len, r->peer_count);
    r->peer_der = NULL;
    r->peer_len = NULL;
    r->peer_count = 0;
    err = request_connect(r);
    if (!err && r->k->peer_count) { /* keep our own copy of the server chain for SERVER_CERT_CONTEXT */
        size_t n = r->k->peer_count;
        r->peer_der = calloc(n, sizeof *r->peer_der);
        r->peer_len = calloc(n, sizeof *r->peer_len);
        if (r->peer_der == NULL || r->peer_len == NULL) err = ERROR_NOT_ENOUGH_MEMORY;
        for (size_t i = 0; !err && i < n; i++) {
            r->peer_der[i] = malloc(r->k->peer_len[i]);
            if (r->peer_der[i] == NULL) {
                err = ERROR_NOT_ENOUGH_MEMORY;
                break;
            }
            memcpy(r->peer_der[i], r->k->peer_der[i], r->k->peer_len[i]);
            r->peer_len[i] = r->k->peer_len[i];
            r->peer_count = i + 1;
        }
    }
    int proxied = r->c->s->access == WINHTTP_ACCESS_TYPE_NAMED_PROXY;
    if (!err && !(proxied && g_pre_tls_notify == 2)) {
        notify(r, WINHTTP_CALLBACK_STATUS_SENDING_REQUEST, NULL, 0);
        if (r->closed) err = ERROR_WINHTTP_OPERATION_CANCELLED;
    }
    if (!err) err = write_request(r, optional, optional_len, total);
    r->busy = 0;
    if (r->closed) { /* closed by the callback: nothing was sent; finish the close now */
        request_drop_conn(r, 0);
        request_free(r);
        return fail(err ? err : ERROR_WINHTTP_OPERATION_CANCELLED);
    }
    if (err) {
        request_drop_conn(r, 0);
        return fail(err);
    }
    r->state = ST_SENT;
    return TRUE;
}

/* ---- response ---- */

static const char *header_value(const char *block, const char *name, size_t *vlen) {
    const char *line = find_header_line(block, name);
    if (line == NULL) return NULL;
    const char *v = line + strlen(name) + 1;
    while (*v == ' ' || *v == '\t') v++;
    const char *end = strstr(v, "\r\n");
    if (end == NULL) end = v + strlen(v);
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    *vlen = (size_t)(end - v);
    return v;
}

static int value_has_token(const char *v, size_t n, const char *token) {
    size_t t = strlen(token);
    for (size_t i = 0; i + t <= n; i++) {
        if (strncasecmp(v + i, token, t) == 0) return 1;
    }
    return 0;
}

static DWORD parse_response_head(request *r, const char *head, size_t head_len) {
    /* status line: HTTP/1.x SP 3DIGIT [SP reason] */
    if (head_len < 12 || strncmp(head, "HTTP/1.", 7) != 0 || head[8] != ' ') return ERROR_WINHTTP_INVALID_SERVER_RESPONSE;
    if (!isdigit((unsigned char)head[9]) || !isdigit((unsigned char)head[10]) || !isdigit((unsigned char)head[11]))
        return ERROR_WINHTTP_INVALID_SERVER_RESPONSE;
    r->status = (DWORD)((head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0'));
    const char *eol = strstr(head, "\r\n");
    const char *reason = head + 12;
    if (*reason == ' ') reason++;
    r->version = strndup(head, 8);
    r->reason = strndup(reason, eol > reason ? (size_t)(eol - reason) : 0);
    r->raw_headers = strndup(head, head_len);
    if (!r->version || !r->reason || !r->raw_headers) return ERROR_NOT_ENOUGH_MEMORY;

    const char *fields = eol + 2;
    size_t vlen;
    const char *v;
    int http11 = head[7] == '1';
    v = header_value(fields, "Connection", &vlen);
    r->keep_alive = http11 ? !(v && value_has_token(v, vlen, "close")) : (v && value_has_token(v, vlen, "keep-alive"));
    if (strcmp(r->verb, "HEAD") == 0 || r->status == 204 || r->status == 304) {
        r->mode = BODY_NONE;
    } else if ((v = header_value(fields, "Transfer-Encoding", &vlen)) != NULL && value_has_token(v, vlen, "chunked")) {
        r->mode = BODY_CHUNKED;
        r->chunk_state = CH_SIZE;
    } else if ((v = header_value(fields, "Content-Length", &vlen)) != NULL) {
        char *endp;
        char num[32];
        if (vlen == 0 || vlen >= sizeof num) return ERROR_WINHTTP_INVALID_SERVER_RESPONSE;
        memcpy(num, v, vlen);
        num[vlen] = 0;
        r->remaining = strtoull(num, &endp, 10);
        if (*endp) return ERROR_WINHTTP_INVALID_SERVER_RESPONSE;
        r->mode = BODY_LENGTH;
    } else {
        r->mode = BODY_CLOSE;
        r->keep_alive = 0;
    }
    r->body_done = r->mode == BODY_NONE || (r->mode == BODY_LENGTH && r->remaining == 0);
    return 0;
}

static void body_finished(request *r) {
    r->body_done = 1;
    request_drop_conn(r, r->keep_alive); /* fully read: the connection may serve the next request */
}

FAKEWIN_EXPORT BOOL WINAPI WinHttpReceiveResponse(HINTERNET h, LPVOID reserved) {
    request *r = as_request(h);
    if (r == NULL) return fail(is_handle(h) ? ERROR_WINHTTP_INCORRECT_HANDLE_TYPE : ERROR_INVALID_HANDLE);
    if (reserved != NULL) return fail(ERROR_INVALID_PARAMETER);
    if (r->state != ST_SENT || r->k == NULL) return fail(ERROR_WINHTTP_INCORRECT_HANDLE_STATE);
    conn *k = r->k;
    for (;;) {
        unsigned char *end = k->rlen >= 4 ? memmem(k->rbuf, k->rlen, "\r\n\r\n", 4) : NULL;
        if (end == NULL) {
            if (k->rlen > MAX_HEADER_BLOCK) {
                request_drop_conn(r, 0);
                return fail(ERROR_WINHTTP_INVALID_SERVER_RESPONSE);
            }
            size_t got;
            DWORD err = conn_fill(k, &got);
            if (!err && got == 0) err = k->rlen ? ERROR_WINHTTP_INVALID_SERVER_RESPONSE : ERROR_WINHTTP_CONNECTION_ERROR;
            if (err) {
                request_drop_conn(r, 0);
                return fail(err);
            }
            continue;
        }
        size_t head_len = (size_t)(end + 4 - k->rbuf);
        char *head = strndup((const char *)k->rbuf, head_len);
        if (head == NULL) return fail(ERROR_NOT_ENOUGH_MEMORY);
        conn_consume(k, head_len);
        response_reset(r);
        DWORD err = parse_response_head(r, head, head_len);
        free(head);
        if (err) {
            request_drop_conn(r, 0);
            return fail(err);
        }
        if (r->status >= 100 && r->status < 200 && r->status != 101) continue; /* interim response */
        break;
    }
    r->state = ST_RESPONSE;
    if (r->body_done) body_finished(r);
    return TRUE;
}

static int dbuf_append(request *r, const unsigned char *p, size_t n) {
    if (r->doff == r->dlen) r->doff = r->dlen = 0;
    if (r->dcap - r->dlen < n) {
        size_t cap = r->dcap ? r->dcap : 32768;
        while (cap - r->dlen < n) cap *= 2;
        unsigned char *grown = realloc(r->dbuf, cap);
        if (grown == NULL) return -1;
        r->dbuf = grown;
        r->dcap = cap;
    }
    memcpy(r->dbuf + r->dlen, p, n);
    r->dlen += n;
    return 0;
}

/* Decode what is buffered; -1 = malformed body, else 0. */
static int body_decode(request *r) {
    conn *k = r->k;
    while (k && k->rlen > 0 && !r->body_done) {
        if (r->mode == BODY_CLOSE) {
            if (dbuf_append(r, k->rbuf, k->rlen)) return -1;
            conn_consume(k, k->rlen);
        } else if (r->mode == BODY_LENGTH || (r->mode == BODY_CHUNKED && r->chunk_state == CH_DATA)) {
            size_t n = k->rlen < r->remaining ? k->rlen : (size_t)r->remaining;
            if (dbuf_append(r, k->rbuf, n)) return -1;
            conn_consume(k, n);
            r->remaining -= n;
            if (r->remaining == 0) {
                if (r->mode == BODY_LENGTH) body_finished(r);
                else r->chunk_state = CH_DATA_CRLF;
            }
        } else if (r->chunk_state == CH_DATA_CRLF) {
            if (k->rlen < 2) break;
            if (k->rbuf[0] != '\r' || k->rbuf[1] != '\n') return -1;
            conn_consume(k, 2);
            r->chunk_state = CH_SIZE;
        } else { /* CH_SIZE or CH_TRAILER: need a whole line */
            unsigned char *eol = memmem(k->rbuf, k->rlen, "\r\n", 2);
            if (eol == NULL) {
                if (k->rlen > 8192) return -1;
                break;
            }
            size_t line_len = (size_t)(eol - k->rbuf);
            if (r->chunk_state == CH_SIZE) {
                char num[32];
                size_t m = 0;
                while (m < line_len && m < sizeof num - 1 && isxdigit(k->rbuf[m])) {
                    num[m] = (char)k->rbuf[m];
                    m++;
                }
                if (m == 0 || m > 15) return -1;
                num[m] = 0;
                r->remaining = strtoull(num, NULL, 16);
                r->chunk_state = r->remaining ? CH_DATA : CH_TRAILER;
                conn_consume(k, line_len + 2);
            } else {
                conn_consume(k, line_len + 2);
                if (line_len == 0) body_finished(r); /* k may be gone now */
            }
        }
        k = r->k;
    }
    return 0;
}

/* Make buffered body bytes available, reading from the wire when needed. */
static DWORD body_pump(request *r) {
    for (;;) {
        if (r->dlen > r->doff || r->body_done) return 0;
        if (body_decode(r) != 0) {
            request_drop_conn(r, 0);
            r->body_done = 1;
            return ERROR_WINHTTP_INVALID_SERVER_RESPONSE;
        }
        if (r->dlen > r->doff || r->body_done) return 0;
        size_t got;
        DWORD err = conn_fill(r->k, &got);
        if (!err && got == 0) {
            if (r->mode == BODY_CLOSE) {
                r->keep_alive = 0;
                body_finished(r);
                return 0;
            }
            err = ERROR_WINHTTP_CONNECTION_ERROR; /* truncated body */
        }
        if (err) {
            request_drop_conn(r, 0);
            r->body_done = 1;
            return err;
        }
    }
}

FAKEWIN_EXPORT BOOL WINAPI WinHttpQueryDataAvailable(HINTERNET h, DWORD *available) {
    request *r = as_request(h);
    if (r == NULL) return fail(is_handle(h) ? ERROR_WINHTTP_INCORRECT_HANDLE_TYPE : ERROR_INVALID_HANDLE);
    if (r->state != ST_RESPONSE) return fail(ERROR_WINHTTP_INCORRECT_HANDLE_STATE);
    DWORD err = body_pump(r);
    if (err) return fail(err);
    size_t n = r->dlen - r->doff;
    if (available) *available = n > 0xFFFFFFFFu ? 0xFFFFFFFFu : (DWORD)n;
    return TRUE;
}

FAKEWIN_EXPORT BOOL WINAPI WinHttpReadData(HINTERNET h, LPVOID buffer, DWORD to_read, DWORD *read) {
    request *r = as_request(h);
    if (r == NULL) return fail(is_handle(h) ? ERROR_WINHTTP_INCORRECT_HANDLE_TYPE : ERROR_INVALID_HANDLE);
    if (r->state != ST_RESPONSE) return fail(ERROR_WINHTTP_INCORRECT_HANDLE_STATE);
    if (read == NULL || (buffer == NULL && to_read)) return fail(ERROR_INVALID_PARAMETER);
    *read = 0;
    if (to_read == 0) return TRUE;
    DWORD err = body_pump(r);
    if (err) return fail(err);
    size_t n = r->dlen - r->doff;
    if (n > to_read) n = to_read;
    memcpy(buffer, r->dbuf + r->doff, n);
    r->doff += n;
    *read = (DWORD)n;
    return TRUE;
}

/* Copy `s` out as UTF-16 with the two-pass size protocol (sizes in bytes, the NUL counted only when
 * asking for the size). */
static BOOL return_wide(const char *s, LPVOID buffer, DWORD *len) {
    WCHAR *w = fakewin_utf8_to_wcs(s);
    if (w == NULL) return fail(ERROR_NOT_ENOUGH_MEMORY);
    DWORD chars = (DWORD)fakewin_wcslen(w);
    DWORD need = (chars + 1) * (DWORD)sizeof(WCHAR);
    if (buffer == NULL || *len < need) {
        free(w);
        *len = need;
        return fail(ERROR_INSUFFICIENT_BUFFER);
    }
    memcpy(buffer, w, need);
    free(w);
    *len = chars * (DWORD)sizeof(WCHAR);
    return TRUE;
}

FAKEWIN_EXPORT BOOL WINAPI WinHttpQueryHeaders(HINTERNET h, DWORD level, LPCWSTR name, LPVOID buffer, DWORD *len,
                                               DWORD *index) {
    request *r = as_request(h);
    if (r == NULL) return fail(is_handle(h) ? ERROR_WINHTTP_INCORRECT_HANDLE_TYPE : ERROR_INVALID_HANDLE);
    if (len == NULL) return fail(ERROR_INVALID_PARAMETER);
    if (r->state != ST_RESPONSE) return fail(ERROR_WINHTTP_INCORRECT_HANDLE_STATE);
    DWORD info = level & ~WINHTTP_QUERY_MODIFIER_FLAGS_MASK;
    int number = (level & WINHTTP_QUERY_FLAG_NUMBER) != 0;
    char tmp[16];
    const char *text = NULL;
    char *owned = NULL;
    switch (info) {
    case WINHTTP_QUERY_STATUS_CODE:
        if (number) {
            if (buffer == NULL || *len < sizeof(DWORD)) {
                *len = sizeof(DWORD);
                return fail(ERROR_INSUFFICIENT_BUFFER);
            }
            memcpy(buffer, &r->status, sizeof(DWORD));
            *len = sizeof(DWORD);
            return TRUE;
        }
        snprintf(tmp, sizeof tmp, "%u", (unsigned)r->status);
        text = tmp;
        break;
    case WINHTTP_QUERY_STATUS_TEXT:
        if (r->reason == NULL || r->reason[0] == 0) return fail(ERROR_WINHTTP_HEADER_NOT_FOUND);
        text = r->reason;
        break;
    case WINHTTP_QUERY_VERSION:
        text = r->version;
        break;
    case WINHTTP_QUERY_RAW_HEADERS_CRLF:
        text = r->raw_headers;
        break;
    case WINHTTP_QUERY_CUSTOM: {
        if (name == NULL || number) return fail(ERROR_INVALID_PARAMETER);
        char *want = fakewin_wcs_to_utf8(name);
        if (want == NULL) return fail(ERROR_NOT_ENOUGH_MEMORY);
        DWORD skip = index ? *index : 0, seen = 0;
        const char *p = strstr(r->raw_headers, "\r\n");
        for (p = p ? p + 2 : NULL; p && *p && strncmp(p, "\r\n", 2) != 0;) {
            size_t vlen;
            const char *v = header_value(p, want, &vlen);
            if (v == NULL) break;
            if (seen++ == skip) {
                owned = strndup(v, vlen);
                break;
            }
            p = strstr(v, "\r\n");
            if (p) p += 2;
        }
        free(want);
        if (owned == NULL) return fail(ERROR_WINHTTP_HEADER_NOT_FOUND);
        text = owned;
        break;
    }
    default:
        return fail(ERROR_WINHTTP_HEADER_NOT_FOUND);
    }
    BOOL ok = return_wide(text, buffer, len);
    if (ok && info == WINHTTP_QUERY_CUSTOM && index) (*index)++;
    DWORD saved = GetLastError();
    free(owned);
    if (!ok) SetLastError(saved);
    return ok;
}

/* ---- test controls ---- */

FAKEWIN_EXPORT int FakeWinHttp_Reset(void) {
    pthread_mutex_lock(&g_lock);
    g_connections_opened = 0;
    g_requests_sent = 0;
    g_pre_tls_notify = 0;
    g_last_access = -1;
    pthread_mutex_unlock(&g_lock);
    return 0;
}

FAKEWIN_EXPORT void FakeWinHttp_SetPreTlsNotify(int mode) {
    pthread_mutex_lock(&g_lock);
    g_pre_tls_notify = mode;
    pthread_mutex_unlock(&g_lock);
}

FAKEWIN_EXPORT int FakeWinHttp_LastAccessType(void) {
    pthread_mutex_lock(&g_lock);
    int access = g_last_access;
    pthread_mutex_unlock(&g_lock);
    return access;
}

FAKEWIN_EXPORT int FakeWinHttp_ConnectionsOpened(void) {
    pthread_mutex_lock(&g_lock);
    int n = g_connections_opened;
    pthread_mutex_unlock(&g_lock);
    return n;
}

FAKEWIN_EXPORT int FakeWinHttp_RequestsSent(void) {
    pthread_mutex_lock(&g_lock);
    int n = g_requests_sent;
    pthread_mutex_unlock(&g_lock);
    return n;
}
