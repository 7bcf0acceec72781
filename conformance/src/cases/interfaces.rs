//! Interfaces and versions (§5.4 `C_GetInterface`/`C_GetInterfaceList`), and miscellaneous rows.

use super::*;

// ------------------------------------------------------------------------------------------------ interfaces

pub(super) fn interfaces(c: &mut Checks, b: &'static Bridge) {
    let name = INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR;
    let get = |name: *mut CK_UTF8CHAR, v: Option<(u8, u8)>, flags: CK_FLAGS| {
        let mut ver = v.map(|(major, minor)| CK_VERSION { major, minor });
        let pv = ver.as_mut().map_or(null_mut(), |v| v as *mut CK_VERSION);
        let mut i: *mut CK_INTERFACE = null_mut();
        let rv = unsafe { (b.get_interface)(name, pv, &mut i, flags) };
        (rv, i)
    };
    let version_of = |i: *mut CK_INTERFACE| unsafe {
        let v = *((*i).pFunctionList as *const CK_VERSION);
        (v.major, v.minor)
    };
    let info_version = |list: *const c_void| unsafe {
        // Both lists start with the version and then C_Initialize, C_Finalize, C_GetInfo.
        let l = &*(list as *const CK_FUNCTION_LIST);
        let mut info: CK_INFO = zeroed();
        let rv = (l.C_GetInfo.unwrap())(&mut info);
        (rv, info.cryptokiVersion.major, info.cryptokiVersion.minor)
    };
    for (want, what) in [((3, 0), "3.0"), ((2, 40), "2.40")] {
        let (rv, i) = get(name, Some(want), 0);
        c.rv(&format!("C_GetInterface(\"PKCS 11\", {what})"), rv, CKR_OK);
        if rv == CKR_OK {
            c.that(
                &format!("interface {what} list version"),
                version_of(i) == want,
                format!("{:?}", version_of(i)),
            );
            let (rv, major, minor) = info_version(unsafe { (*i).pFunctionList });
            c.rv(&format!("C_GetInfo via the {what} list"), rv, CKR_OK);
            c.that(
                &format!("C_GetInfo via the {what} list: cryptokiVersion"),
                (major, minor) == want,
                format!("{major}.{minor}"),
            );
        }
    }
    let (rv, i) = get(null_mut(), None, 0);
    c.rv("C_GetInterface(NULL, NULL)", rv, CKR_OK);
    if rv == CKR_OK {
        c.that(
            "default interface is 3.0",
            version_of(i) == (3, 0),
            format!("{:?}", version_of(i)),
        );
    }
    let (rv, i) = get(name, None, 0);
    c.rv("C_GetInterface(\"PKCS 11\", NULL)", rv, CKR_OK);
    if rv == CKR_OK {
        c.that(
            "newest PKCS 11 interface is 3.0",
            version_of(i) == (3, 0),
            format!("{:?}", version_of(i)),
        );
    }
    // What is not offered: the spec names no code; the bridge says ARGUMENTS_BAD (never OK).
    let (rv, _) = get(name, Some((9, 9)), 0);
    c.rv("C_GetInterface unknown version", rv, BAD);
    let (rv, _) = get(c"Vendor XY".as_ptr() as *mut _, None, 0);
    c.rv("C_GetInterface unknown name", rv, BAD);

    // The list of C_GetFunctionList.
    c.that(
        "C_GetFunctionList version",
        (b.f.version.major, b.f.version.minor) == (2, 40),
        format!("{:?}", b.f.version),
    );
    let (rv, major, minor) = info_version(b.f as *const CK_FUNCTION_LIST as *const c_void);
    c.rv("C_GetInfo via C_GetFunctionList's list", rv, CKR_OK);
    c.that(
        "C_GetInfo via the 2.40 list: cryptokiVersion 2.40",
        (major, minor) == (2, 40),
        format!("{major}.{minor}"),
    );
    let mut info: CK_INFO = zeroed();
    c.rv(
        "C_GetInfo (3.0 list)",
        call!(b.f3, C_GetInfo(&mut info)),
        CKR_OK,
    );
    c.next_bridge_only();
    c.that(
        "C_GetInfo via the 3.0 list: cryptokiVersion 3.0",
        (info.cryptokiVersion.major, info.cryptokiVersion.minor) == (3, 0),
        format!("{:?}", info.cryptokiVersion),
    );
}

// ------------------------------------------------------------------------------------------------ miscellaneous

pub(super) fn misc(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let (f, f3) = (b.f, b.f3);
    let s = x.s;
    let mut slot: CK_SLOT_ID = 0;
    chk!(
        c,
        f,
        CKR_NO_EVENT,
        "CKF_DONT_BLOCK",
        C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, null_mut())
    );
    let mut reserved = 0u8;
    chk!(
        c,
        f,
        BAD,
        "pReserved non-NULL",
        C_WaitForSlotEvent(
            CKF_DONT_BLOCK,
            &mut slot,
            &mut reserved as *mut u8 as *mut c_void
        )
    );
    chk!(c, f, CKR_FUNCTION_NOT_PARALLEL, "", C_GetFunctionStatus(s));
    chk!(c, f, CKR_FUNCTION_NOT_PARALLEL, "", C_CancelFunction(s));
    let mut h: CK_SESSION_HANDLE = 0;
    let w = CKR_SESSION_PARALLEL_NOT_SUPPORTED;
    chk!(
        c,
        f,
        w,
        "flags 0",
        C_OpenSession(x.u, 0, null_mut(), None, &mut h)
    );
    chk!(
        c,
        f,
        w,
        "CKF_RW_SESSION only",
        C_OpenSession(x.u, CKF_RW_SESSION, null_mut(), None, &mut h)
    );
    chk!(
        c,
        f,
        w,
        "flags 0 (mirror)",
        C_OpenSession(x.mirror, 0, null_mut(), None, &mut h)
    );
    let so = tgt().so_pin;
    let mut label = *b"unified                         ";
    c.next_bridge_only();
    chk!(
        c,
        f,
        CKR_FUNCTION_NOT_SUPPORTED,
        "unified slot",
        C_InitToken(
            x.u,
            so.as_ptr() as *mut u8,
            so.len() as CK_ULONG,
            label.as_mut_ptr()
        )
    );
    let mut mi: CK_MECHANISM_INFO = zeroed();
    chk!(
        c,
        f,
        CKR_MECHANISM_INVALID,
        "unknown mechanism",
        C_GetMechanismInfo(x.u, 0x7fff_0000, &mut mi)
    );

    // 3.0 message-based encryption: AES-GCM, emulated over the backend's single-part AES-GCM (SoftHSM2 has no
    // 3.0 list: n/a there); multi-part messages are not supported.
    let ns = CKR_FUNCTION_NOT_SUPPORTED;
    let mut m = mech(CKM_AES_GCM);
    let mut buf = [0u8; 64];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 64;
    let p = buf.as_mut_ptr() as *mut c_void;
    let k = x.aes;
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 16];
    let mut gp = CK_GCM_MESSAGE_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvFixedBits: 0,
        ivGenerator: CKG_NO_GENERATE,
        pTag: tag.as_mut_ptr(),
        ulTagBits: 128,
    };
    let gpp = &mut gp as *mut CK_GCM_MESSAGE_PARAMS as *mut c_void;
    let gpl = std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;
    let mut data = *b"data";
    let dp = data.as_mut_ptr();
    let mut ct = [0u8; 16];
    let mut ctl: CK_ULONG = 16;
    chk!(c, f3, CKR_OK, "AES-GCM", C_MessageEncryptInit(s, &mut m, k));
    chk!(
        c,
        f3,
        CKR_MECHANISM_PARAM_INVALID,
        "a parameter that is no CK_GCM_MESSAGE_PARAMS",
        C_EncryptMessage(s, p, 12, bp, 4, bp, 4, bp, &mut len)
    );
    chk!(
        c,
        f3,
        CKR_OK,
        "one message",
        C_EncryptMessage(s, gpp, gpl, bp, 4, dp, 4, ct.as_mut_ptr(), &mut ctl)
    );
    chk!(c, f3, ns, "", C_EncryptMessageBegin(s, gpp, gpl, bp, 4));
    chk!(
        c,
        f3,
        ns,
        "",
        C_EncryptMessageNext(s, gpp, gpl, bp, 4, bp, &mut len, 0)
    );
    chk!(c, f3, CKR_OK, "", C_MessageEncryptFinal(s));
    chk!(
        c,
        f3,
        CKR_OPERATION_NOT_INITIALIZED,
        "twice",
        C_MessageEncryptFinal(s)
    );
    chk!(c, f3, CKR_OK, "AES-GCM", C_MessageDecryptInit(s, &mut m, k));
    chk!(
        c,
        f3,
        CKR_MECHANISM_PARAM_INVALID,
        "a parameter that is no CK_GCM_MESSAGE_PARAMS",
        C_DecryptMessage(s, p, 12, bp, 4, bp, 4, bp, &mut len)
    );
    let mut back = [0u8; 16];
    let mut backl: CK_ULONG = 16;
    chk!(
        c,
        f3,
        CKR_OK,
        "the message encrypted above",
        C_DecryptMessage(
            s,
            gpp,
            gpl,
            bp,
            4,
            ct.as_mut_ptr(),
            ctl,
            back.as_mut_ptr(),
            &mut backl
        )
    );
    c.next_bridge_only();
    c.that(
        "C_DecryptMessage gives the plaintext back",
        back[..backl as usize] == *b"data",
        format!("{backl} bytes"),
    );
    chk!(c, f3, ns, "", C_DecryptMessageBegin(s, gpp, gpl, bp, 4));
    chk!(
        c,
        f3,
        ns,
        "",
        C_DecryptMessageNext(s, gpp, gpl, bp, 4, bp, &mut len, 0)
    );
    chk!(c, f3, CKR_OK, "", C_MessageDecryptFinal(s));
    // Message-based signing: not supported.
    let mut m = mech(CKM_ECDSA);
    chk!(c, f3, ns, "", C_MessageSignInit(s, &mut m, x.ec_priv));
    chk!(c, f3, ns, "", C_SignMessage(s, p, 0, bp, 4, bp, &mut len));
    chk!(c, f3, ns, "", C_SignMessageBegin(s, p, 0));
    chk!(
        c,
        f3,
        ns,
        "",
        C_SignMessageNext(s, p, 0, bp, 4, bp, &mut len)
    );
    chk!(c, f3, ns, "", C_MessageSignFinal(s));
    chk!(c, f3, ns, "", C_MessageVerifyInit(s, &mut m, x.ec_pub));
    chk!(c, f3, ns, "", C_VerifyMessage(s, p, 0, bp, 4, bp, 64));
    chk!(c, f3, ns, "", C_VerifyMessageBegin(s, p, 0));
    chk!(c, f3, ns, "", C_VerifyMessageNext(s, p, 0, bp, 4, bp, 64));
    chk!(c, f3, ns, "", C_MessageVerifyFinal(s));
    // Still working.
    let sig = b.ecdsa_sign(s, x.ec_priv, &[3u8; 32]);
    c.that("C_Sign at the end", sig.is_ok(), format!("{sig:?}"));
}
