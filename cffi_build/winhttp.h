/* winhttp.dll (winhttp.h): synchronous HTTPS with a client certificate whose key is a CNG (KeyGuard)
 * key, which OpenSSL cannot use. HINTERNET = void *, DWORD = uint32_t, BOOL = int,
 * INTERNET_PORT = uint16_t, DWORD_PTR = uintptr_t, LPCWSTR = const char16_t *.
 */

typedef void (WINAPI *WINHTTP_STATUS_CALLBACK)(void *hInternet, uintptr_t dwContext, uint32_t dwInternetStatus,
                                               void *lpvStatusInformation, uint32_t dwStatusInformationLength);

void *WINAPI WinHttpOpen(const char16_t *pszAgentW, uint32_t dwAccessType, const char16_t *pszProxyW,
                         const char16_t *pszProxyBypassW, uint32_t dwFlags);
int WINAPI WinHttpSetTimeouts(void *hInternet, int nResolveTimeout, int nConnectTimeout, int nSendTimeout,
                              int nReceiveTimeout);
void *WINAPI WinHttpConnect(void *hSession, const char16_t *pswzServerName, uint16_t nServerPort,
                            uint32_t dwReserved);
void *WINAPI WinHttpOpenRequest(void *hConnect, const char16_t *pwszVerb, const char16_t *pwszObjectName,
                                const char16_t *pwszVersion, const char16_t *pwszReferrer,
                                const char16_t **ppwszAcceptTypes, uint32_t dwFlags);
int WINAPI WinHttpSetOption(void *hInternet, uint32_t dwOption, void *lpBuffer, uint32_t dwBufferLength);
int WINAPI WinHttpQueryOption(void *hInternet, uint32_t dwOption, void *lpBuffer, uint32_t *lpdwBufferLength);
WINHTTP_STATUS_CALLBACK WINAPI WinHttpSetStatusCallback(void *hInternet, WINHTTP_STATUS_CALLBACK lpfnInternetCallback,
                                                        uint32_t dwNotificationFlags, uintptr_t dwReserved);
int WINAPI WinHttpAddRequestHeaders(void *hRequest, const char16_t *lpszHeaders, uint32_t dwHeadersLength,
                                    uint32_t dwModifiers);
int WINAPI WinHttpSendRequest(void *hRequest, const char16_t *lpszHeaders, uint32_t dwHeadersLength,
                              void *lpOptional, uint32_t dwOptionalLength, uint32_t dwTotalLength,
                              uintptr_t dwContext);
int WINAPI WinHttpReceiveResponse(void *hRequest, void *lpReserved);
int WINAPI WinHttpQueryHeaders(void *hRequest, uint32_t dwInfoLevel, const char16_t *pwszName, void *lpBuffer,
                               uint32_t *lpdwBufferLength, uint32_t *lpdwIndex);
int WINAPI WinHttpQueryDataAvailable(void *hRequest, uint32_t *lpdwNumberOfBytesAvailable);
int WINAPI WinHttpReadData(void *hRequest, void *lpBuffer, uint32_t dwNumberOfBytesToRead,
                           uint32_t *lpdwNumberOfBytesRead);
int WINAPI WinHttpCloseHandle(void *hInternet);
