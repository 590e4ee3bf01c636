/* crypt32.dll (wincrypt.h): the certificate context WinHTTP presents as the TLS client certificate,
 * with the KeyGuard key attached as CERT_NCRYPT_KEY_HANDLE_PROP_ID; and the server's certificate
 * context that WinHTTP hands back, walked through its store to get the chain the server sent.
 * Portable types: DWORD = uint32_t, BOOL = int, BYTE = uint8_t, HCERTSTORE = void *.
 */

typedef struct _CERT_CONTEXT {
    uint32_t dwCertEncodingType;
    uint8_t *pbCertEncoded;
    uint32_t cbCertEncoded;
    void *pCertInfo;              /* PCERT_INFO: never read by the bindings */
    void *hCertStore;             /* HCERTSTORE */
} CERT_CONTEXT;
typedef const CERT_CONTEXT *PCCERT_CONTEXT;

PCCERT_CONTEXT WINAPI CertCreateCertificateContext(uint32_t dwCertEncodingType,
                                                   const uint8_t *pbCertEncoded, uint32_t cbCertEncoded);
PCCERT_CONTEXT WINAPI CertDuplicateCertificateContext(PCCERT_CONTEXT pCertContext);
int WINAPI CertFreeCertificateContext(PCCERT_CONTEXT pCertContext);
int WINAPI CertSetCertificateContextProperty(PCCERT_CONTEXT pCertContext, uint32_t dwPropId,
                                             uint32_t dwFlags, const void *pvData);
int WINAPI CertGetCertificateContextProperty(PCCERT_CONTEXT pCertContext, uint32_t dwPropId,
                                             void *pvData, uint32_t *pcbData);
PCCERT_CONTEXT WINAPI CertEnumCertificatesInStore(void *hCertStore, PCCERT_CONTEXT pPrevCertContext);
