//! Operation state and the two-call convention (§5.2, §5.8-§5.13 cryptographic functions).

use super::*;

// ------------------------------------------------------------------------------------------------ operation state

pub(super) fn operation_state(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let (f, f3) = (b.f, b.f3);
    let data = [7u8; 64];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0u8; 512];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 512;
    let mut list = [0 as CK_OBJECT_HANDLE; 8];
    let mut n: CK_ULONG = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let w = CKR_OPERATION_NOT_INITIALIZED;
    let s = b.open(x.u, RW).unwrap();
    let ni = "without Init";
    chk!(c, f, w, ni, C_Sign(s, dp, 32, bp, &mut len));
    chk!(c, f, w, ni, C_SignUpdate(s, dp, 32));
    chk!(c, f, w, ni, C_SignFinal(s, bp, &mut len));
    chk!(c, f, w, ni, C_SignRecover(s, dp, 32, bp, &mut len));
    chk!(c, f, w, ni, C_Verify(s, dp, 32, dp, 64));
    chk!(c, f, w, ni, C_VerifyUpdate(s, dp, 32));
    chk!(c, f, w, ni, C_VerifyFinal(s, dp, 64));
    chk!(c, f, w, ni, C_VerifyRecover(s, dp, 64, bp, &mut len));
    chk!(c, f, w, ni, C_Encrypt(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_EncryptUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_EncryptFinal(s, bp, &mut len));
    chk!(c, f, w, ni, C_Decrypt(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_DecryptUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_DecryptFinal(s, bp, &mut len));
    chk!(c, f, w, ni, C_Digest(s, dp, 32, bp, &mut len));
    chk!(c, f, w, ni, C_DigestUpdate(s, dp, 32));
    chk!(c, f, w, ni, C_DigestKey(s, x.aes));
    chk!(c, f, w, ni, C_DigestFinal(s, bp, &mut len));
    chk!(c, f, w, ni, C_DigestEncryptUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_DecryptDigestUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_SignEncryptUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_DecryptVerifyUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_FindObjects(s, list.as_mut_ptr(), 8, &mut n));
    chk!(c, f, w, ni, C_FindObjectsFinal(s));

    // Init twice: the second says OPERATION_ACTIVE and the first goes on.
    let act = CKR_OPERATION_ACTIVE;
    // `init_twice!(C_XxxInit(…), C_Xxx(…))`: the Init, the Init again, then the operation the first one started
    // (`output:` first: with the output length reset to the buffer's).
    macro_rules! init_twice {
        (output: $init:ident ( $($i:expr),* ), $op:ident ( $($o:expr),* )) => {
            chk!(c, f, CKR_OK, "", $init($($i),*));
            chk!(c, f, act, "twice", $init($($i),*));
            len = 512;
            chk!(c, f, CKR_OK, "after OPERATION_ACTIVE", $op($($o),*));
        };
        ($init:ident ( $($i:expr),* ), $op:ident ( $($o:expr),* )) => {
            chk!(c, f, CKR_OK, "", $init($($i),*));
            chk!(c, f, act, "twice", $init($($i),*));
            chk!(c, f, CKR_OK, "after OPERATION_ACTIVE", $op($($o),*));
        };
    }
    init_twice!(output: C_SignInit(s, &mut ecdsa, x.ec_priv),
        C_Sign(s, dp, 32, bp, &mut len)
    );
    let sig = buf[..len as usize].to_vec();
    init_twice!(
        C_VerifyInit(s, &mut ecdsa, x.ec_pub),
        C_Verify(s, dp, 32, sig.as_ptr() as *mut u8, sig.len() as CK_ULONG)
    );
    init_twice!(output: C_DigestInit(s, &mut sha), C_Digest(s, dp, 32, bp, &mut len));
    init_twice!(output: C_EncryptInit(s, &mut ecb, x.aes),
        C_Encrypt(s, dp, 16, bp, &mut len)
    );
    init_twice!(output: C_DecryptInit(s, &mut ecb, x.aes),
        C_Decrypt(s, dp, 16, bp, &mut len)
    );
    init_twice!(
        C_FindObjectsInit(s, null_mut(), 0),
        C_FindObjects(s, list.as_mut_ptr(), 8, &mut n)
    );
    c.that("C_FindObjects finds objects", n > 0, "none");
    chk!(c, f, CKR_OK, "", C_FindObjectsFinal(s));
    chk!(
        c,
        f,
        w,
        "after C_FindObjectsFinal",
        C_FindObjects(s, list.as_mut_ptr(), 8, &mut n)
    );
    chk!(c, f, w, "twice", C_FindObjectsFinal(s));

    close(b, s);

    // 3.0: Init with a NULL mechanism, or C_SessionCancel, ends the active operation; a new Init then works.
    let sign_init = |h| call!(f, C_SignInit(h, &mut mech(CKM_ECDSA), x.ec_priv));
    let rsa_init = |h| call!(f, C_SignInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_priv));
    for (init, what) in [
        (&sign_init as &dyn Fn(_) -> _, "ECDSA"),
        (&rsa_init, "SHA256_RSA_PKCS"),
    ] {
        let h = op_session(b, &x, init);
        chk!(
            c,
            f,
            CKR_OK,
            format!("NULL mechanism cancels {what} (3.0)"),
            C_SignInit(h, null_mut(), 0)
        );
        len = 512;
        chk!(
            c,
            f,
            w,
            format!("after the cancel ({what})"),
            C_Sign(h, dp, 32, bp, &mut len)
        );
        c.rv(
            &format!("C_SignInit after the cancel ({what})"),
            init(h),
            CKR_OK,
        );
        close(b, h);
        let h = op_session(b, &x, init);
        chk!(
            c,
            f3,
            CKR_OK,
            format!("CKF_SIGN ({what})"),
            C_SessionCancel(h, CKF_SIGN)
        );
        len = 512;
        chk!(
            c,
            f,
            w,
            format!("after C_SessionCancel ({what})"),
            C_Sign(h, dp, 32, bp, &mut len)
        );
        c.rv(
            &format!("C_SignInit after C_SessionCancel ({what})"),
            init(h),
            CKR_OK,
        );
        close(b, h);
    }
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(
        c,
        f,
        CKR_OK,
        "NULL mechanism cancels (3.0)",
        C_DigestInit(h, null_mut())
    );
    chk!(c, f, CKR_OK, "after the cancel", C_DigestInit(h, &mut sha));
    close(b, h);

    // [SPEC] C_Sign: "A call to C_Sign always terminates the active signing operation unless it returns
    // CKR_BUFFER_TOO_SMALL or is a successful call (i.e., one which returns CKR_OK) to determine the length of the
    // buffer needed to hold the signature": a C_Sign that returns CKR_ARGUMENTS_BAD ends it too.
    let h = op_session(b, &x, sign_init);
    chk!(
        c,
        f,
        BAD,
        "NULL data with a length",
        C_Sign(h, null_mut(), 32, bp, &mut len)
    );
    len = 512;
    chk!(
        c,
        f,
        w,
        "[SPEC] after a C_Sign that returned CKR_ARGUMENTS_BAD",
        C_Sign(h, dp, 32, bp, &mut len)
    );
    close(b, h);
    let h = op_session(b, &x, sign_init);
    chk!(
        c,
        f,
        BAD,
        "NULL pulSignatureLen",
        C_Sign(h, dp, 32, bp, null_mut())
    );
    len = 512;
    chk!(
        c,
        f,
        w,
        "[SPEC] after a C_Sign that returned CKR_ARGUMENTS_BAD (NULL pulSignatureLen)",
        C_Sign(h, dp, 32, bp, &mut len)
    );
    close(b, h);
    // §5.2: a single-part call cannot finish a multi-part operation; the call ends it (SoftHSM2's code).
    let rsa_sign = |h| call!(f, C_SignInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_priv));
    let h = op_session(b, &x, rsa_sign);
    chk!(c, f, CKR_OK, "(multi-part)", C_SignUpdate(h, dp, 32));
    len = 512;
    chk!(
        c,
        f,
        w,
        "after C_SignUpdate",
        C_Sign(h, dp, 32, bp, &mut len)
    );
    len = 512;
    chk!(
        c,
        f,
        w,
        "after a C_Sign that ended it",
        C_SignFinal(h, bp, &mut len)
    );
    close(b, h);
    let rsa_verify = |h| {
        call!(
            f,
            C_VerifyInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_pub)
        )
    };
    let h = op_session(b, &x, rsa_verify);
    chk!(c, f, CKR_OK, "(multi-part)", C_VerifyUpdate(h, dp, 32));
    chk!(
        c,
        f,
        w,
        "after C_VerifyUpdate",
        C_Verify(h, dp, 32, dp, 256)
    );
    close(b, h);
}

// ------------------------------------------------------------------------------------------------ two-call

pub(super) fn two_call(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    let data = [9u8; 32];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0xAAu8; 512];
    let bp = buf.as_mut_ptr();
    let mut ecdsa = mech(CKM_ECDSA);

    // C_Sign, ECDSA P-256 on the unified token.
    chk!(c, f, CKR_OK, "", C_SignInit(s, &mut ecdsa, x.ec_priv));
    let mut len: CK_ULONG = 0;
    chk!(
        c,
        f,
        CKR_OK,
        "NULL pSignature (length query)",
        C_Sign(s, dp, 32, null_mut(), &mut len)
    );
    c.that("C_Sign length query", len == 64, format!("length {len}"));
    len = 10;
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "10-byte buffer",
        C_Sign(s, dp, 32, bp, &mut len)
    );
    c.that(
        "C_Sign BUFFER_TOO_SMALL writes the length",
        len == 64,
        format!("length {len}"),
    );
    c.that(
        "C_Sign BUFFER_TOO_SMALL writes nothing past the buffer",
        buf[10..].iter().all(|x| *x == 0xAA),
        "buffer overrun",
    );
    len = 512;
    chk!(
        c,
        f,
        CKR_OK,
        "after the length queries",
        C_Sign(s, dp, 32, bp, &mut len)
    );
    c.that(
        "C_Sign signature length",
        len == 64,
        format!("length {len}"),
    );
    let sig = buf[..len as usize].to_vec();
    len = 512;
    chk!(
        c,
        f,
        CKR_OPERATION_NOT_INITIALIZED,
        "after success",
        C_Sign(s, dp, 32, bp, &mut len)
    );
    c.rv(
        "C_Verify of the two-call signature",
        b.ecdsa_verify(s, x.ec_pub, &data, &sig),
        CKR_OK,
    );

    // C_Digest likewise.
    let mut sha = mech(CKM_SHA256);
    chk!(c, f, CKR_OK, "", C_DigestInit(s, &mut sha));
    len = 0;
    chk!(
        c,
        f,
        CKR_OK,
        "length query",
        C_Digest(s, dp, 32, null_mut(), &mut len)
    );
    c.that("C_Digest length query", len == 32, format!("length {len}"));
    len = 10;
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "10-byte buffer",
        C_Digest(s, dp, 32, bp, &mut len)
    );
    c.that(
        "C_Digest BUFFER_TOO_SMALL length",
        len == 32,
        format!("length {len}"),
    );
    len = 512;
    chk!(c, f, CKR_OK, "", C_Digest(s, dp, 32, bp, &mut len));
    len = 512;
    chk!(
        c,
        f,
        CKR_OPERATION_NOT_INITIALIZED,
        "after success",
        C_Digest(s, dp, 32, bp, &mut len)
    );

    // C_GetSlotList.
    let mut n: CK_ULONG = 0;
    chk!(
        c,
        f,
        CKR_OK,
        "NULL list",
        C_GetSlotList(CK_FALSE, null_mut(), &mut n)
    );
    c.next_bridge_only();
    c.that("slot count", n >= 3, format!("{n} slots"));
    let want = n;
    let mut slots = vec![CK_ULONG::MAX; want as usize + 4];
    n = 0;
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "count 0",
        C_GetSlotList(CK_FALSE, slots.as_mut_ptr(), &mut n)
    );
    c.that(
        "C_GetSlotList BUFFER_TOO_SMALL count",
        n == want,
        format!("{n}"),
    );
    n = want - 1;
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "count - 1",
        C_GetSlotList(CK_FALSE, slots.as_mut_ptr(), &mut n)
    );
    c.that(
        "C_GetSlotList BUFFER_TOO_SMALL count",
        n == want,
        format!("{n}"),
    );
    n = want + 4;
    chk!(
        c,
        f,
        CKR_OK,
        "larger buffer",
        C_GetSlotList(CK_FALSE, slots.as_mut_ptr(), &mut n)
    );
    c.that("C_GetSlotList count", n == want, format!("{n}"));
    c.that(
        "C_GetSlotList lists the unified slot",
        slots[..n as usize].contains(&x.u),
        format!("{slots:?}"),
    );
    c.that(
        "C_GetSlotList writes nothing past the count",
        slots[n as usize..].iter().all(|v| *v == CK_ULONG::MAX),
        format!("{slots:?}"),
    );

    // C_GetMechanismList, unified and mirror.
    for (slot, what) in [(x.u, "unified"), (x.mirror, "mirror")] {
        let mut n: CK_ULONG = 0;
        chk!(
            c,
            f,
            CKR_OK,
            what,
            C_GetMechanismList(slot, null_mut(), &mut n)
        );
        c.that(&format!("{what} mechanism count"), n > 2, format!("{n}"));
        let want = n;
        let mut v = vec![0 as CK_ULONG; want as usize];
        n = 1;
        chk!(
            c,
            f,
            CKR_BUFFER_TOO_SMALL,
            what,
            C_GetMechanismList(slot, v.as_mut_ptr(), &mut n)
        );
        c.that(
            &format!("{what} mechanism BUFFER_TOO_SMALL count"),
            n == want,
            format!("{n}"),
        );
        n = want;
        chk!(
            c,
            f,
            CKR_OK,
            what,
            C_GetMechanismList(slot, v.as_mut_ptr(), &mut n)
        );
        c.that(
            &format!("{what} mechanisms include CKM_ECDSA"),
            v.contains(&CKM_ECDSA),
            format!("{v:?}"),
        );
    }

    // C_GetInterfaceList (3.0 modules).
    if !b.has_v3 {
        return;
    }
    let mut n: CK_ULONG = 0;
    c.rv(
        "C_GetInterfaceList NULL list",
        unsafe { (b.get_interface_list)(null_mut(), &mut n) },
        CKR_OK,
    );
    c.that("interface count", n == 2, format!("{n}"));
    let mut ifaces: [CK_INTERFACE; 4] = zeroed();
    n = 1;
    c.rv(
        "C_GetInterfaceList count 1",
        unsafe { (b.get_interface_list)(ifaces.as_mut_ptr(), &mut n) },
        CKR_BUFFER_TOO_SMALL,
    );
    c.that(
        "C_GetInterfaceList BUFFER_TOO_SMALL count",
        n == 2,
        format!("{n}"),
    );
    n = 4;
    c.rv(
        "C_GetInterfaceList",
        unsafe { (b.get_interface_list)(ifaces.as_mut_ptr(), &mut n) },
        CKR_OK,
    );
    let mut versions = vec![];
    for i in &ifaces[..n as usize] {
        let name = unsafe { std::ffi::CStr::from_ptr(i.pInterfaceName as *const _) };
        c.that(
            "interface name",
            name.to_bytes() == b"PKCS 11",
            format!("{name:?}"),
        );
        let v = unsafe { *(i.pFunctionList as *const CK_VERSION) };
        versions.push((v.major, v.minor));
    }
    c.that(
        "interface versions",
        versions == [(3, 0), (2, 40)],
        format!("{versions:?}"),
    );
}
