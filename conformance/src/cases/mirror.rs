//! Mirror transparency: the mirror slot answers as the upstream token does.

use super::*;

// ------------------------------------------------------------------------------------------ mirror transparency

/// Call sequences on the mirror of the upstream token (on SoftHSM2 directly: the same token), where the expected
/// answer is the upstream's own (SoftHSM2 2.6.1, measured), not one the bridge makes up: an application written
/// against the upstream gets the same answers through a mirror.
pub(super) fn mirror_transparency(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let mirror_pin = tgt().mirror_pin;
    let Ok(s) = b.open(x.mirror, CKF_SERIAL_SESSION) else {
        c.that("open a session on the mirror", false, "refused");
        return;
    };
    // C_Logout without a login, and twice after one: the upstream answers CKR_OK.
    chk!(c, f, CKR_OK, "on the mirror without a login", C_Logout(s));
    c.rv(
        "C_Login on the mirror",
        b.login(s, CKU_USER, mirror_pin),
        CKR_OK,
    );
    chk!(c, f, CKR_OK, "on the mirror after a login", C_Logout(s));
    chk!(c, f, CKR_OK, "on the mirror, a second time", C_Logout(s));
    // An argument the bridge refuses itself (NULL data with a length) leaves the operation active, as the
    // upstream (which never saw the call) does.
    let mut m = mech(CKM_SHA256);
    let mut data = *b"abc";
    let mut out = [0u8; 64];
    let mut n: CK_ULONG = 64;
    chk!(
        c,
        f,
        CKR_OK,
        "SHA-256 on the mirror",
        C_DigestInit(s, &mut m)
    );
    chk!(
        c,
        f,
        CKR_ARGUMENTS_BAD,
        "NULL data with a length, on the mirror",
        C_Digest(s, null_mut(), 3, out.as_mut_ptr(), &mut n)
    );
    n = 64;
    chk!(
        c,
        f,
        CKR_OK,
        "after a refused NULL data: the operation is still active",
        C_Digest(s, data.as_mut_ptr(), 3, out.as_mut_ptr(), &mut n)
    );
    c.that(
        "C_Digest's result is SHA-256(\"abc\")",
        n == 32 && out[..4] == [0xba, 0x78, 0x16, 0xbf],
        format!("{n} bytes"),
    );
    chk!(
        c,
        f,
        CKR_OK,
        "SHA-256 again, on the mirror",
        C_DigestInit(s, &mut m)
    );
    chk!(
        c,
        f,
        CKR_ARGUMENTS_BAD,
        "NULL part with a length, on the mirror",
        C_DigestUpdate(s, null_mut(), 3)
    );
    chk!(
        c,
        f,
        CKR_OK,
        "after a refused NULL part: the operation is still active",
        C_DigestUpdate(s, data.as_mut_ptr(), 3)
    );
    n = 64;
    chk!(
        c,
        f,
        CKR_OK,
        "ends the operation kept across the refused part",
        C_DigestFinal(s, out.as_mut_ptr(), &mut n)
    );
    call!(f, C_CloseSession(s));
}
