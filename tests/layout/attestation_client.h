/* AttestationClientLib.dll has no public header: this one restates PROTOCOL.md section 4 (cdecl, ANSI),
 * so the layout check can hold cffi_build/attestation.h against it like the system DLLs' headers. */
#ifndef ATTESTATION_CLIENT_H
#define ATTESTATION_CLIENT_H

typedef void (*AttestationLogFunc)(void *ctx, const char *tag, int level, const char *func, int line,
                                   const char *msg);
typedef struct {
    AttestationLogFunc Log;
    void *Ctx;
} AttestationLogInfo;

int __cdecl InitAttestationLib(AttestationLogInfo *info);
int __cdecl AttestKeyGuardImportKey(const char *endpoint, const char *authToken, const char *clientPayload,
                                    void *keyHandle, char **token, const char *clientId);
void __cdecl FreeAttestationToken(char *token);
void __cdecl UninitAttestationLib(void);

#endif
