//! Before `C_Initialize`, `C_Initialize`'s arguments (§5.4 general-purpose functions).

use super::*;

// ------------------------------------------------------------------------------------------------ before init

unsafe extern "C" fn notify(_: CK_SESSION_HANDLE, _: CK_NOTIFICATION, _: *mut c_void) -> CK_RV {
    CKR_OK
}

pub(super) fn uninitialized(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let w = NOT_INIT;
    let u = "uninitialized";
    let mut info: CK_INFO = zeroed();
    let mut slot_info: CK_SLOT_INFO = zeroed();
    let mut token_info: CK_TOKEN_INFO = zeroed();
    let mut mech_info: CK_MECHANISM_INFO = zeroed();
    let mut session_info: CK_SESSION_INFO = zeroed();
    let mut list = [0 as CK_ULONG; 64];
    let mut n: CK_ULONG = 64;
    let mut buf = [0u8; 256];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 256;
    let lp: *mut CK_ULONG = &mut len;
    let data = [7u8; 32];
    let dp = data.as_ptr() as *mut u8;
    let mut m = mech(CKM_SHA256);
    let mut h: CK_SESSION_HANDLE = 0;
    let (mut o1, mut o2): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
    let pin = b"1234".as_ptr() as *mut u8;
    let mut label = [b' '; 32];
    let mut class = CKO_DATA;
    let mut t = [attr(CKA_CLASS, &mut class)];
    let tp = t.as_mut_ptr();
    let mut slot: CK_SLOT_ID = 0;
    let s = 1 as CK_SESSION_HANDLE;
    let k = 1 as CK_OBJECT_HANDLE;

    chk!(c, f, w, u, C_Finalize(null_mut()));
    chk!(c, f, w, u, C_GetInfo(&mut info));
    chk!(
        c,
        f,
        w,
        u,
        C_GetSlotList(CK_TRUE, list.as_mut_ptr(), &mut n)
    );
    chk!(c, f, w, u, C_GetSlotInfo(0, &mut slot_info));
    chk!(c, f, w, u, C_GetTokenInfo(0, &mut token_info));
    chk!(c, f, w, u, C_GetMechanismList(0, list.as_mut_ptr(), &mut n));
    chk!(c, f, w, u, C_GetMechanismInfo(0, CKM_ECDSA, &mut mech_info));
    chk!(c, f, w, u, C_InitToken(0, pin, 4, label.as_mut_ptr()));
    chk!(c, f, w, u, C_InitPIN(s, pin, 4));
    chk!(c, f, w, u, C_SetPIN(s, pin, 4, pin, 4));
    chk!(
        c,
        f,
        w,
        u,
        C_OpenSession(0, RW, null_mut(), Some(notify), &mut h)
    );
    chk!(c, f, w, u, C_CloseSession(s));
    chk!(c, f, w, u, C_CloseAllSessions(0));
    chk!(c, f, w, u, C_GetSessionInfo(s, &mut session_info));
    chk!(c, f, w, u, C_GetOperationState(s, bp, lp));
    chk!(c, f, w, u, C_SetOperationState(s, dp, 32, 0, 0));
    chk!(c, f, w, u, C_Login(s, CKU_USER, pin, 4));
    chk!(c, f, w, u, C_Logout(s));
    chk!(c, f, w, u, C_CreateObject(s, tp, 1, &mut o1));
    chk!(c, f, w, u, C_CopyObject(s, k, tp, 1, &mut o1));
    chk!(c, f, w, u, C_DestroyObject(s, k));
    chk!(c, f, w, u, C_GetObjectSize(s, k, &mut n));
    chk!(c, f, w, u, C_GetAttributeValue(s, k, tp, 1));
    chk!(c, f, w, u, C_SetAttributeValue(s, k, tp, 1));
    chk!(c, f, w, u, C_FindObjectsInit(s, tp, 1));
    chk!(c, f, w, u, C_FindObjects(s, list.as_mut_ptr(), 4, &mut n));
    chk!(c, f, w, u, C_FindObjectsFinal(s));
    chk!(c, f, w, u, C_EncryptInit(s, &mut m, k));
    chk!(c, f, w, u, C_Encrypt(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_EncryptUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_EncryptFinal(s, bp, lp));
    chk!(c, f, w, u, C_DecryptInit(s, &mut m, k));
    chk!(c, f, w, u, C_Decrypt(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DecryptUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DecryptFinal(s, bp, lp));
    chk!(c, f, w, u, C_DigestInit(s, &mut m));
    chk!(c, f, w, u, C_Digest(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DigestUpdate(s, dp, 32));
    chk!(c, f, w, u, C_DigestKey(s, k));
    chk!(c, f, w, u, C_DigestFinal(s, bp, lp));
    chk!(c, f, w, u, C_SignInit(s, &mut m, k));
    chk!(c, f, w, u, C_Sign(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_SignUpdate(s, dp, 32));
    chk!(c, f, w, u, C_SignFinal(s, bp, lp));
    chk!(c, f, w, u, C_SignRecoverInit(s, &mut m, k));
    chk!(c, f, w, u, C_SignRecover(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_VerifyInit(s, &mut m, k));
    chk!(c, f, w, u, C_Verify(s, dp, 32, dp, 32));
    chk!(c, f, w, u, C_VerifyUpdate(s, dp, 32));
    chk!(c, f, w, u, C_VerifyFinal(s, dp, 32));
    chk!(c, f, w, u, C_VerifyRecoverInit(s, &mut m, k));
    chk!(c, f, w, u, C_VerifyRecover(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DigestEncryptUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DecryptDigestUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_SignEncryptUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DecryptVerifyUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_GenerateKey(s, &mut m, tp, 1, &mut o1));
    chk!(
        c,
        f,
        w,
        u,
        C_GenerateKeyPair(s, &mut m, tp, 1, tp, 1, &mut o1, &mut o2)
    );
    chk!(c, f, w, u, C_WrapKey(s, &mut m, k, k, bp, lp));
    chk!(
        c,
        f,
        w,
        u,
        C_UnwrapKey(s, &mut m, k, dp, 32, tp, 1, &mut o1)
    );
    chk!(c, f, w, u, C_DeriveKey(s, &mut m, k, tp, 1, &mut o1));
    chk!(c, f, w, u, C_SeedRandom(s, dp, 32));
    chk!(c, f, w, u, C_GenerateRandom(s, bp, 16));
    chk!(c, f, w, u, C_GetFunctionStatus(s));
    chk!(c, f, w, u, C_CancelFunction(s));
    chk!(
        c,
        f,
        w,
        u,
        C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, null_mut())
    );
    // 3.0 additions (the message functions are stubs: see `misc`).
    let f3 = b.f3;
    chk!(c, f3, w, u, C_LoginUser(s, CKU_USER, pin, 4, pin, 4));
    chk!(c, f3, w, u, C_SessionCancel(s, CKF_SIGN));

    // What works before C_Initialize.
    let mut fl: *mut CK_FUNCTION_LIST = null_mut();
    c.rv(
        "C_GetFunctionList uninitialized",
        unsafe { (b.get_function_list)(&mut fl) },
        CKR_OK,
    );
    c.that(
        "C_GetFunctionList's list",
        std::ptr::eq(fl, b.f),
        "another list",
    );
    chk!(c, f, CKR_OK, u, C_GetFunctionList(&mut fl));
    let mut ifaces: [CK_INTERFACE; 4] = zeroed();
    let mut n: CK_ULONG = 4;
    c.na_if(!b.has_v3);
    c.rv(
        "C_GetInterfaceList uninitialized",
        unsafe { (b.get_interface_list)(ifaces.as_mut_ptr(), &mut n) },
        CKR_OK,
    );
    c.that("C_GetInterfaceList count", n == 2, format!("{n}"));
    let mut i: *mut CK_INTERFACE = null_mut();
    c.rv(
        "C_GetInterface(NULL, NULL) uninitialized",
        unsafe { (b.get_interface)(null_mut(), null_mut(), &mut i, 0) },
        CKR_OK,
    );
    c.na_end();
    // A failed C_Initialize leaves the module uninitialized: checked in `initialize_args`.
}

// ------------------------------------------------------------------------------------------------ C_Initialize

unsafe extern "C" fn create_mutex(p: *mut *mut c_void) -> CK_RV {
    if !p.is_null() {
        *p = std::ptr::dangling_mut::<c_void>();
    }
    CKR_OK
}

unsafe extern "C" fn mutex_op(_: *mut c_void) -> CK_RV {
    CKR_OK
}

pub(super) fn init_args(callbacks: [bool; 4], flags: CK_FLAGS) -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: callbacks[0].then_some(create_mutex as _),
        DestroyMutex: callbacks[1].then_some(mutex_op as _),
        LockMutex: callbacks[2].then_some(mutex_op as _),
        UnlockMutex: callbacks[3].then_some(mutex_op as _),
        flags,
        pReserved: null_mut(),
    }
}

/// Whether the module is initialized (`C_GetInfo` answers).
pub(super) fn initialized(b: &Bridge) -> bool {
    let mut info: CK_INFO = zeroed();
    call!(b.f, C_GetInfo(&mut info)) == CKR_OK
}

pub(super) fn initialize_args(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let try_init = |c: &mut Checks, case: &str, mut a: CK_C_INITIALIZE_ARGS, want: CK_RV| {
        let got = call!(f, C_Initialize(&mut a as *mut _ as *mut c_void));
        c.rv(&format!("C_Initialize {case}"), got, want);
        let is = initialized(b);
        c.that(
            &format!("C_Initialize {case}: initialized afterwards"),
            is == (got == CKR_OK),
            format!("initialized = {is} after {}", rv_name(got)),
        );
        if is {
            c.rv(&format!("C_Finalize after {case}"), b.finalize(), CKR_OK);
        }
    };
    let mut reserved = 0u8;
    let mut a = init_args([false; 4], 0);
    a.pReserved = &mut reserved as *mut u8 as *mut c_void;
    try_init(c, "pReserved non-NULL", a, BAD);
    a.flags = CKF_OS_LOCKING_OK;
    try_init(c, "pReserved non-NULL, OS_LOCKING_OK", a, BAD);
    for (given, what) in [
        ([true, false, false, false], "CreateMutex only"),
        ([false, true, false, false], "DestroyMutex only"),
        ([true, true, false, false], "Create/DestroyMutex only"),
        ([true, true, true, false], "three of four callbacks"),
        ([false, true, true, true], "no CreateMutex"),
    ] {
        try_init(c, what, init_args(given, 0), BAD);
        try_init(
            c,
            &format!("{what}, OS_LOCKING_OK"),
            init_args(given, CKF_OS_LOCKING_OK),
            BAD,
        );
    }
    try_init(
        c,
        "all four callbacks without OS_LOCKING_OK",
        init_args([true; 4], 0),
        CKR_OK,
    );
    try_init(
        c,
        "all four callbacks with OS_LOCKING_OK",
        init_args([true; 4], CKF_OS_LOCKING_OK),
        CKR_OK,
    );
    try_init(
        c,
        "no callbacks, OS_LOCKING_OK",
        init_args([false; 4], CKF_OS_LOCKING_OK),
        CKR_OK,
    );
    try_init(
        c,
        "no callbacks, no flags",
        init_args([false; 4], 0),
        CKR_OK,
    );
    try_init(
        c,
        "LIBRARY_CANT_CREATE_OS_THREADS",
        init_args([false; 4], CKF_LIBRARY_CANT_CREATE_OS_THREADS),
        CKR_OK,
    );
    try_init(
        c,
        "LIBRARY_CANT_CREATE_OS_THREADS | OS_LOCKING_OK",
        init_args(
            [false; 4],
            CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK,
        ),
        CKR_OK,
    );

    // NULL pInitArgs, then a second C_Initialize.
    chk!(c, f, CKR_OK, "NULL", C_Initialize(null_mut()));
    chk!(
        c,
        f,
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
        "twice (NULL)",
        C_Initialize(null_mut())
    );
    let mut a = init_args([false; 4], CKF_OS_LOCKING_OK);
    chk!(
        c,
        f,
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
        "twice (args)",
        C_Initialize(&mut a as *mut _ as *mut c_void)
    );
    let mut reserved = 0u8;
    chk!(
        c,
        f,
        BAD,
        "pReserved non-NULL",
        C_Finalize(&mut reserved as *mut u8 as *mut c_void)
    );
    c.that(
        "still initialized after C_Finalize(non-NULL)",
        initialized(b),
        "not initialized",
    );
    chk!(c, f, CKR_OK, "NULL", C_Finalize(null_mut()));
    chk!(c, f, NOT_INIT, "twice", C_Finalize(null_mut()));
    // Initialize again after a finalize.
    chk!(c, f, CKR_OK, "after C_Finalize", C_Initialize(null_mut()));
    chk!(c, f, CKR_OK, "", C_Finalize(null_mut()));
}
