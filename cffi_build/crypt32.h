/* crypt32.dll (wincrypt.h): the certificate context WinHTTP presents as the TLS client certificate,
 * with the KeyGuard key attached by name only (CERT_KEY_PROV_INFO_PROP_ID, a CRYPT_KEY_PROV_INFO; never
 * CERT_NCRYPT_KEY_HANDLE_PROP_ID, which would take ownership of the handle); and the server's certificate
 * context that WinHTTP hands back, walked through its store to get the chain the server sent.
 * Portable types: DWORD = uint32_t, BOOL = int, BYTE = uint8_t, LPWSTR = char16_t *, HCERTSTORE = void *.
 */

typedef struct _CERT_CONTEXT {
    uint32_t dwCertEncodingType;
    uint8_t *pbCertEncoded;
    uint32_t cbCertEncoded;
    void *pCertInfo;              /* PCERT_INFO: never read by the bindings */
    void *hCertStore;             /* HCERTSTORE */
} CERT_CONTEXT;
typedef const CERT_CONTEXT *PCCERT_CONTEXT;

/* Only for CryptoAPI (dwProvType != 0) containers; a CNG key leaves cProvParam 0 and rgProvParam NULL. */
typedef struct _CRYPT_KEY_PROV_PARAM {
    uint32_t dwParam;
    uint8_t *pbData;
    uint32_t cbData;
    uint32_t dwFlags;
} CRYPT_KEY_PROV_PARAM;

/* CERT_KEY_PROV_INFO_PROP_ID's value. With dwProvType 0 the names go to NCryptOpenStorageProvider and
 * NCryptOpenKey, and dwKeySpec is NCryptOpenKey's dwLegacyKeySpec. Read back, the strings (and params)
 * follow the structure in the caller's buffer and the pointers point there. */
typedef struct _CRYPT_KEY_PROV_INFO {
    char16_t *pwszContainerName;
    char16_t *pwszProvName;
    uint32_t dwProvType;
    uint32_t dwFlags;
    uint32_t cProvParam;
    CRYPT_KEY_PROV_PARAM *rgProvParam;
    uint32_t dwKeySpec;
} CRYPT_KEY_PROV_INFO;

PCCERT_CONTEXT WINAPI CertCreateCertificateContext(uint32_t dwCertEncodingType,
                                                   const uint8_t *pbCertEncoded, uint32_t cbCertEncoded);
PCCERT_CONTEXT WINAPI CertDuplicateCertificateContext(PCCERT_CONTEXT pCertContext);
int WINAPI CertFreeCertificateContext(PCCERT_CONTEXT pCertContext);
int WINAPI CertSetCertificateContextProperty(PCCERT_CONTEXT pCertContext, uint32_t dwPropId,
                                             uint32_t dwFlags, const void *pvData);
int WINAPI CertGetCertificateContextProperty(PCCERT_CONTEXT pCertContext, uint32_t dwPropId,
                                             void *pvData, uint32_t *pcbData);
PCCERT_CONTEXT WINAPI CertEnumCertificatesInStore(void *hCertStore, PCCERT_CONTEXT pPrevCertContext);
