/* Shared internals of the fake Windows DLLs: last error, UTF-16 helpers, the live-handle registry. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fakewin.h"

/* BEGIN PYTHON CDEF
int FakeWin_LiveHandles(void);
int FakeWin_LiveHandlesOfKind(const char *kind);
int FakeWin_BadFrees(void);
END PYTHON CDEF */

/* ---- last error ---- */

static __thread DWORD g_last_error;

FAKEWIN_EXPORT void WINAPI SetLastError(DWORD code) {
    g_last_error = code;
    errno = (int)code; /* cffi saves errno after each call: the Linux stand-in for getwinerror() */
}

FAKEWIN_EXPORT DWORD WINAPI GetLastError(void) { return g_last_error; }

/* ---- UTF-16 ---- */

size_t fakewin_wcslen(LPCWSTR s) {
    size_t n = 0;
    if (s == NULL) return 0;
    while (s[n] != 0) n++;
    return n;
}

char *fakewin_wcs_to_utf8(LPCWSTR w) {
    if (w == NULL) return NULL;
    size_t n = fakewin_wcslen(w);
    char *out = malloc(n * 3 + 1); /* a UTF-16 unit never needs more than 3 UTF-8 bytes */
    if (out == NULL) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = w[i];
        if (c >= 0xD800 && c <= 0xDBFF && i + 1 < n && w[i + 1] >= 0xDC00 && w[i + 1] <= 0xDFFF) {
            c = 0x10000 + ((c - 0xD800) << 10) + (w[i + 1] - 0xDC00);
            i++;
        }
        if (c < 0x80) {
            out[o++] = (char)c;
        } else if (c < 0x800) {
            out[o++] = (char)(0xC0 | (c >> 6));
            out[o++] = (char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            out[o++] = (char)(0xE0 | (c >> 12));
            out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (c & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | (c >> 18));
            out[o++] = (char)(0x80 | ((c >> 12) & 0x3F));
            out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (c & 0x3F));
        }
    }
    out[o] = 0;
    return out;
}

WCHAR *fakewin_utf8_to_wcs(const char *s) {
    if (s == NULL) return NULL;
    size_t n = strlen(s);
    WCHAR *out = malloc((n + 1) * sizeof(WCHAR));
    if (out == NULL) return NULL;
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t c = p[i];
        int extra = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
        c = extra == 0 ? c : extra == 1 ? (c & 0x1F) : extra == 2 ? (c & 0x0F) : (c & 0x07);
        i++;
        for (int k = 0; k < extra && i < n; k++, i++) c = (c << 6) | (p[i] & 0x3F);
        if (c >= 0x10000) {
            c -= 0x10000;
            out[o++] = (WCHAR)(0xD800 + (c >> 10));
            out[o++] = (WCHAR)(0xDC00 + (c & 0x3FF));
        } else {
            out[o++] = (WCHAR)c;
        }
    }
    out[o] = 0;
    return out;
}

int fakewin_wcs_eq(LPCWSTR w, const char *s) {
    if (w == NULL || s == NULL) return 0;
    char *u = fakewin_wcs_to_utf8(w);
    int eq = u != NULL && strcmp(u, s) == 0;
    free(u);
    return eq;
}

/* ---- live-handle registry ---- */

typedef struct {
    const char *kind; /* string literal or caller-owned constant; compared with strcmp */
    const void *h;
} handle_entry;

static pthread_mutex_t g_handles_lock = PTHREAD_MUTEX_INITIALIZER;
static handle_entry *g_handles;
static size_t g_handles_len, g_handles_cap;
static int g_bad_frees;

void fakewin_handle_add(const char *kind, const void *h) {
    pthread_mutex_lock(&g_handles_lock);
    if (g_handles_len == g_handles_cap) {
        size_t cap = g_handles_cap ? g_handles_cap * 2 : 64;
        handle_entry *grown = realloc(g_handles, cap * sizeof *grown);
        if (grown == NULL) abort(); /* a test fake: out of memory is not a case worth emulating */
        g_handles = grown;
        g_handles_cap = cap;
    }
    g_handles[g_handles_len].kind = kind;
    g_handles[g_handles_len].h = h;
    g_handles_len++;
    pthread_mutex_unlock(&g_handles_lock);
}

static long find_locked(const char *kind, const void *h) {
    for (size_t i = 0; i < g_handles_len; i++) {
        if (g_handles[i].h == h && strcmp(g_handles[i].kind, kind) == 0) return (long)i;
    }
    return -1;
}

int fakewin_handle_remove(const char *kind, const void *h) {
    pthread_mutex_lock(&g_handles_lock);
    long i = find_locked(kind, h);
    if (i >= 0) {
        g_handles[i] = g_handles[g_handles_len - 1];
        g_handles_len--;
    } else {
        g_bad_frees++;
    }
    pthread_mutex_unlock(&g_handles_lock);
    return i >= 0 ? 0 : -1;
}

int fakewin_handle_live(const char *kind, const void *h) {
    if (h == NULL) return 0;
    pthread_mutex_lock(&g_handles_lock);
    int live = find_locked(kind, h) >= 0;
    pthread_mutex_unlock(&g_handles_lock);
    return live;
}

FAKEWIN_EXPORT int FakeWin_LiveHandles(void) { return FakeWin_LiveHandlesOfKind(NULL); }

FAKEWIN_EXPORT int FakeWin_LiveHandlesOfKind(const char *kind) {
    pthread_mutex_lock(&g_handles_lock);
    int n = 0;
    for (size_t i = 0; i < g_handles_len; i++) {
        if (kind == NULL || strcmp(g_handles[i].kind, kind) == 0) n++;
    }
    pthread_mutex_unlock(&g_handles_lock);
    return n;
}

FAKEWIN_EXPORT int FakeWin_BadFrees(void) {
    pthread_mutex_lock(&g_handles_lock);
    int n = g_bad_frees;
    pthread_mutex_unlock(&g_handles_lock);
    return n;
}
