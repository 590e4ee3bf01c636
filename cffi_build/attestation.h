/* AttestationClientLib.dll (PROTOCOL.md section 4): cdecl, ANSI strings, no public header. */

typedef void (*AttestationLogFunc)(void *ctx, const char *tag, int level, const char *func, int line,
                                   const char *msg);

typedef struct {
    AttestationLogFunc Log;
    void *Ctx;
} AttestationLogInfo;

int InitAttestationLib(AttestationLogInfo *info);
int AttestKeyGuardImportKey(const char *endpoint, const char *authToken, const char *clientPayload,
                            void *keyHandle, char **token, const char *clientId);
void FreeAttestationToken(char *token);
void UninitAttestationLib(void);
