#!/usr/bin/python3
"""The PKCS#11 call sequence of the Vault/OpenBao `seal "pkcs11"` wrapper (go-kms-wrapping's pkcs11 wrapper),
replayed with PyKCS11 against a PKCS#11 module, to encrypt and decrypt a root key as the seal does.

    seal.py encrypt LIB TOKEN_LABEL PIN KEY_LABEL MECH BLOB   # reads 32 random bytes, writes BLOB (JSON)
    seal.py decrypt LIB TOKEN_LABEL PIN KEY_LABEL MECH BLOB   # prints the decrypted root key (hex)

MECH: aes-gcm (CKM_AES_GCM, 12-byte IV from C_GenerateRandom, 128-bit tag) or rsa-oaep (CKM_RSA_PKCS_OAEP,
SHA-256, MGF1-SHA-256). Sequence, as the wrapper does it: C_Initialize; C_GetSlotList(token present) and
C_GetTokenInfo until the token label matches; C_OpenSession(CKF_SERIAL_SESSION | CKF_RW_SESSION); C_Login(CKU_USER);
C_FindObjectsInit on CKA_CLASS + CKA_KEY_TYPE + CKA_LABEL + CKA_ENCRYPT (or CKA_DECRYPT) = true, C_FindObjects,
C_FindObjectsFinal, exactly one match required; encrypt: C_GenerateRandom (IV, AES-GCM), C_EncryptInit + C_Encrypt;
decrypt: C_DecryptInit + C_Decrypt; C_Logout, C_CloseSession, C_Finalize.
"""
import json
import os
import sys

import PyKCS11


def fail(msg):
    print("seal: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    op, lib_path, token_label, pin, key_label, mech, blob_path = sys.argv[1:8]
    lib = PyKCS11.PyKCS11Lib()
    lib.load(lib_path)  # C_Initialize
    slot = None
    for s in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(s).label.strip() == token_label:
            slot = s
            break
    if slot is None:
        fail("no token labelled %r" % token_label)
    session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    session.login(pin, PyKCS11.CKU_USER)

    if mech == "aes-gcm":
        cls, ktype = PyKCS11.CKO_SECRET_KEY, PyKCS11.CKK_AES
    elif mech == "rsa-oaep":
        cls = PyKCS11.CKO_PUBLIC_KEY if op == "encrypt" else PyKCS11.CKO_PRIVATE_KEY
        ktype = PyKCS11.CKK_RSA
    else:
        fail("unknown mechanism " + mech)
    usage = PyKCS11.CKA_ENCRYPT if op == "encrypt" else PyKCS11.CKA_DECRYPT
    template = [
        (PyKCS11.CKA_CLASS, cls),
        (PyKCS11.CKA_KEY_TYPE, ktype),
        (PyKCS11.CKA_LABEL, key_label),
        (usage, PyKCS11.CK_TRUE),
    ]
    keys = session.findObjects(template)
    if len(keys) != 1:
        fail("C_FindObjects: %d objects match %s (the seal requires exactly one)" % (len(keys), key_label))
    key = keys[0]

    def oaep():
        return PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA256, PyKCS11.CKG_MGF1_SHA256)

    if op == "encrypt":
        root_key = os.urandom(32)
        out = {"mech": mech, "key": key_label}
        if mech == "aes-gcm":
            iv = bytes(session.generateRandom(12))  # C_GenerateRandom
            m = PyKCS11.AES_GCM_Mechanism(iv, b"", 128)
            out["iv"] = iv.hex()
        else:
            m = oaep()
        ct = bytes(session.encrypt(key, root_key, m))  # C_EncryptInit + C_Encrypt
        out["ciphertext"] = ct.hex()
        with open(blob_path, "w", encoding="utf-8") as f:
            json.dump(out, f)
        print(root_key.hex())
    else:
        with open(blob_path, encoding="utf-8") as f:
            blob = json.load(f)
        if mech == "aes-gcm":
            m = PyKCS11.AES_GCM_Mechanism(bytes.fromhex(blob["iv"]), b"", 128)
        else:
            m = oaep()
        pt = bytes(session.decrypt(key, bytes.fromhex(blob["ciphertext"]), m))  # C_DecryptInit + C_Decrypt
        print(pt.hex())
    session.logout()
    session.closeSession()
    del lib  # C_Finalize


if __name__ == "__main__":
    try:
        main()
    except PyKCS11.PyKCS11Error as e:
        fail("PKCS#11: %s" % e)
