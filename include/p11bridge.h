/*
 * p11bridge vendor-defined PKCS#11 constants.
 * Include after pkcs11.h (or any header that defines CK_ULONG and CKA_VENDOR_DEFINED).
 * Kept in step with backends/src/vendor.rs.
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

#endif /* P11BRIDGE_H */
