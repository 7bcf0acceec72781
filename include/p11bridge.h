/*
 * p11bridge vendor-defined PKCS#11 constants.
 * Include after pkcs11.h (or any header that defines CK_ULONG, CK_RV, CK_UTF8CHAR and CKA_VENDOR_DEFINED).
 * Kept in step with vendor-constants/src/lib.rs (the Rust twin; vendor-constants/tests/header.rs compares them).
 */
#ifndef P11BRIDGE_H
#define P11BRIDGE_H

#define P11BRIDGE_VENDOR_BASE        0x8B11D000UL

/* Attributes */
/* UTF-8 name of the backend holding the object; selects the backend in C_Generate* / C_CreateObject templates and
 * filters C_FindObjectsInit. Read-only on existing objects. */
#define CKA_P11BRIDGE_BACKEND        (P11BRIDGE_VENDOR_BASE + 0x001UL)
/* CK_ULONG: key version in use (Vault transit). Read-only. */
#define CKA_P11BRIDGE_KEY_VERSION    (P11BRIDGE_VENDOR_BASE + 0x002UL)

/* Mechanisms */
/* AWS KMS symmetric Encrypt/Decrypt; ciphertext = the KMS ciphertext blob. Optional parameter: the encryption
 * context as a UTF-8 JSON object of strings, e.g. {"purpose":"backup"} (none when NULL / empty). */
#define CKM_P11BRIDGE_KMS_ENCRYPT    (P11BRIDGE_VENDOR_BASE + 0x101UL)
/* Vault transit encrypt/decrypt; ciphertext = "vault:vN:..." bytes. */
#define CKM_P11BRIDGE_VAULT_ENCRYPT  (P11BRIDGE_VENDOR_BASE + 0x102UL)
/* Vault transit rewrap to the latest key version. */
#define CKM_P11BRIDGE_VAULT_REWRAP   (P11BRIDGE_VENDOR_BASE + 0x103UL)

/* Functions exported by libp11bridge.so beside the PKCS#11 ones (not in any function list: use dlsym).
 *
 * C_P11BRIDGE_GetLastError: the cause of the calling thread's last failure, in the backend's own words (which
 * backend, which endpoint or key, what it answered), e.g. after C_Login, C_FindObjectsInit or C_Sign failed, or
 * after a search that succeeded but could not list one backend's keys. *pRv is the CK_RV that failure returned
 * (CKR_OK for a backend hidden from a search that succeeded, or when nothing failed: then *pulTextLen is 0).
 * The text is UTF-8, not NUL-terminated, with the two-call convention (pText NULL: length only). A successful
 * copy clears the record; calls that succeed do not (like errno). Works before C_Initialize: a C_Initialize that
 * failed leaves the configuration problem here. pRv may be NULL.
 *
 * C_P11BRIDGE_Check: checks every backend of every slot now (logs in with the configured credentials, lists the
 * objects, resolves the configured keys, reads the PIN references) and returns UTF-8 JSON (docs/check.md). It makes
 * network calls and logs backends in and out: call it in a process of its own (p11bridge check does). The first
 * call (pReport NULL) runs the checks and returns the length; the next call on that thread returns the same report.
 */
typedef CK_RV (*CK_P11BRIDGE_GetLastError)(CK_RV *pRv, CK_UTF8CHAR *pText, CK_ULONG *pulTextLen);
typedef CK_RV (*CK_P11BRIDGE_Check)(CK_UTF8CHAR *pReport, CK_ULONG *pulReportLen);
CK_RV C_P11BRIDGE_GetLastError(CK_RV *pRv, CK_UTF8CHAR *pText, CK_ULONG *pulTextLen);
CK_RV C_P11BRIDGE_Check(CK_UTF8CHAR *pReport, CK_ULONG *pulReportLen);

#endif /* P11BRIDGE_H */
