/* ncrypt.dll (ncrypt.h, bcrypt.h): the CNG key storage calls behind a KeyGuard binding key.
 * Portable types: uint32_t = DWORD/ULONG, int32_t = SECURITY_STATUS, char16_t = WCHAR. */

typedef uintptr_t NCRYPT_HANDLE;
typedef uintptr_t NCRYPT_PROV_HANDLE;
typedef uintptr_t NCRYPT_KEY_HANDLE;

/* Opaque (NCryptBufferDesc is BCryptBufferDesc): we never pass export parameters. */
typedef struct _BCryptBufferDesc NCryptBufferDesc;

typedef struct {
    const char16_t *pszAlgId;
    uint32_t cbSalt;
} BCRYPT_PSS_PADDING_INFO;

/* Header of a BCRYPT_RSAPUBLIC_BLOB; the big-endian exponent and modulus follow it. */
typedef struct {
    uint32_t Magic;
    uint32_t BitLength;
    uint32_t cbPublicExp;
    uint32_t cbModulus;
    uint32_t cbPrime1;
    uint32_t cbPrime2;
} BCRYPT_RSAKEY_BLOB;

int32_t WINAPI NCryptOpenStorageProvider(NCRYPT_PROV_HANDLE *phProvider, const char16_t *pszProviderName,
                                         uint32_t dwFlags);
int32_t WINAPI NCryptOpenKey(NCRYPT_PROV_HANDLE hProvider, NCRYPT_KEY_HANDLE *phKey, const char16_t *pszKeyName,
                             uint32_t dwLegacyKeySpec, uint32_t dwFlags);
int32_t WINAPI NCryptCreatePersistedKey(NCRYPT_PROV_HANDLE hProvider, NCRYPT_KEY_HANDLE *phKey,
                                        const char16_t *pszAlgId, const char16_t *pszKeyName,
                                        uint32_t dwLegacyKeySpec, uint32_t dwFlags);
int32_t WINAPI NCryptSetProperty(NCRYPT_HANDLE hObject, const char16_t *pszProperty, uint8_t *pbInput,
                                 uint32_t cbInput, uint32_t dwFlags);
int32_t WINAPI NCryptFinalizeKey(NCRYPT_KEY_HANDLE hKey, uint32_t dwFlags);
int32_t WINAPI NCryptGetProperty(NCRYPT_HANDLE hObject, const char16_t *pszProperty, uint8_t *pbOutput,
                                 uint32_t cbOutput, uint32_t *pcbResult, uint32_t dwFlags);
int32_t WINAPI NCryptExportKey(NCRYPT_KEY_HANDLE hKey, NCRYPT_KEY_HANDLE hExportKey, const char16_t *pszBlobType,
                               NCryptBufferDesc *pParameterList, uint8_t *pbOutput, uint32_t cbOutput,
                               uint32_t *pcbResult, uint32_t dwFlags);
int32_t WINAPI NCryptSignHash(NCRYPT_KEY_HANDLE hKey, void *pPaddingInfo, uint8_t *pbHashValue,
                              uint32_t cbHashValue, uint8_t *pbSignature, uint32_t cbSignature,
                              uint32_t *pcbResult, uint32_t dwFlags);
int32_t WINAPI NCryptDeleteKey(NCRYPT_KEY_HANDLE hKey, uint32_t dwFlags);
int32_t WINAPI NCryptFreeObject(NCRYPT_HANDLE hObject);
