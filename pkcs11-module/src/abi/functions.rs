//! Every PKCS#11 2.40 and 3.0 function. Order of checks, as in the reference implementations: initialized →
//! arguments → session → state.

use super::*;
use crate::core::{self, module, InitArgs};
use p11bridge_backends::{pad, DualKind, OpKind};
use std::ffi::c_void;

// ---------------------------------------------------------------- general purpose

cryptoki_fn!(
    /// `C_Initialize`: honours `CK_C_INITIALIZE_ARGS` (§5.4).
    fn C_Initialize(pInitArgs: *mut c_void) {
        let mut args = InitArgs::default();
        if !pInitArgs.is_null() {
            let a = std::ptr::read_unaligned(pInitArgs as *const CK_C_INITIALIZE_ARGS);
            if !a.pReserved.is_null() {
                return Err(Error::new(CKR_ARGUMENTS_BAD));
            }
            let given = [
                a.CreateMutex.is_some(),
                a.DestroyMutex.is_some(),
                a.LockMutex.is_some(),
                a.UnlockMutex.is_some(),
            ];
            let n = given.iter().filter(|g| **g).count();
            if n != 0 && n != 4 {
                return Err(Error::new(CKR_ARGUMENTS_BAD));
            }
            // Mutex callbacks without CKF_OS_LOCKING_OK (§5.4, case 3) are accepted, as SoftHSM2 accepts them:
            // the bridge locks with the operating system's primitives (pthread) whatever the application gives,
            // and never calls the callbacks; upstream modules are initialized with CKF_OS_LOCKING_OK.
            args.cant_create_threads = a.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS != 0;
        }
        core::initialize(args)
    }
);

cryptoki_fn!(
    fn C_Finalize(pReserved: *mut c_void) {
        if !pReserved.is_null() {
            module()?;
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        core::finalize()
    }
);

fn info(major: u8, minor: u8) -> CK_INFO {
    CK_INFO {
        cryptokiVersion: CK_VERSION { major, minor },
        manufacturerID: pad("p11bridge"),
        flags: 0,
        libraryDescription: pad("p11bridge unified PKCS#11 token"),
        libraryVersion: CK_VERSION {
            major: env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0),
            minor: env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0),
        },
    }
}

/// `C_GetInfo` at interface version `major.minor`: p11bridge's identity, or the upstream's with
/// `library_info = "upstream"`.
fn library_info(major: u8, minor: u8) -> Result<CK_INFO> {
    let m = module()?;
    match &m.library_info {
        Some(b) => {
            let mut i = b.library_info()?;
            i.cryptokiVersion = CK_VERSION { major, minor };
            Ok(i)
        }
        None => Ok(info(major, minor)),
    }
}

cryptoki_fn!(
    fn C_GetInfo(pInfo: *mut CK_INFO) {
        let i = library_info(3, 0)?;
        put(pInfo, i)
    }
);

/// `C_GetInfo` of the 2.40 function list: reports the interface version the caller chose.
///
/// # Safety
/// `pInfo` must be NULL or valid for a write of `CK_INFO`.
#[allow(non_snake_case)]
pub unsafe extern "C" fn C_GetInfo_v2(pInfo: *mut CK_INFO) -> CK_RV {
    guard("C_GetInfo", || {
        let i = library_info(2, 40)?;
        put(pInfo, i)
    })
}

cryptoki_fn!(
    fn C_GetFunctionList(ppFunctionList: *mut *mut CK_FUNCTION_LIST) {
        put(ppFunctionList, function_list_240())
    }
);

// ---------------------------------------------------------------- slots and tokens

cryptoki_fn!(
    fn C_GetSlotList(tokenPresent: CK_BBOOL, pSlotList: *mut CK_SLOT_ID, pulCount: *mut CK_ULONG) {
        let m = module()?;
        put_list(&m.slot_list(tokenPresent != CK_FALSE), pSlotList, pulCount)
    }
);

cryptoki_fn!(
    fn C_GetSlotInfo(slotID: CK_SLOT_ID, pInfo: *mut CK_SLOT_INFO) {
        let m = module()?;
        if pInfo.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        put(pInfo, m.slot(slotID)?.slot_info()?)
    }
);

cryptoki_fn!(
    fn C_GetTokenInfo(slotID: CK_SLOT_ID, pInfo: *mut CK_TOKEN_INFO) {
        let m = module()?;
        if pInfo.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        let slot = m.slot(slotID)?;
        if !slot.token_present() {
            return Err(Error::new(CKR_TOKEN_NOT_PRESENT));
        }
        put(pInfo, slot.token_info()?)
    }
);

cryptoki_fn!(
    fn C_GetMechanismList(
        slotID: CK_SLOT_ID,
        pMechanismList: *mut CK_MECHANISM_TYPE,
        pulCount: *mut CK_ULONG,
    ) {
        let m = module()?;
        if pulCount.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        let list = m.slot(slotID)?.mechanism_list()?;
        put_list(&list, pMechanismList, pulCount)
    }
);

cryptoki_fn!(
    fn C_GetMechanismInfo(
        slotID: CK_SLOT_ID,
        type_: CK_MECHANISM_TYPE,
        pInfo: *mut CK_MECHANISM_INFO,
    ) {
        let m = module()?;
        if pInfo.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        put(pInfo, m.slot(slotID)?.mechanism_info(type_)?)
    }
);

/// `C_GetMechanismInfo` of the 2.40 function list: without the 3.0 message-based flags, which mean nothing to a
/// 2.40 caller (and the bridge's own would make a mirror differ from its 2.40 upstream).
///
/// # Safety
/// `pInfo` must be NULL or valid for a write of `CK_MECHANISM_INFO`.
#[allow(non_snake_case)]
pub unsafe extern "C" fn C_GetMechanismInfo_v2(
    slotID: CK_SLOT_ID,
    type_: CK_MECHANISM_TYPE,
    pInfo: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard("C_GetMechanismInfo", || {
        let m = module()?;
        if pInfo.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        let mut info = m.slot(slotID)?.mechanism_info(type_)?;
        info.flags &= !(CKF_MESSAGE_ENCRYPT
            | CKF_MESSAGE_DECRYPT
            | CKF_MESSAGE_SIGN
            | CKF_MESSAGE_VERIFY
            | CKF_MULTI_MESSAGE);
        put(pInfo, info)
    })
}

cryptoki_fn!(
    fn C_InitToken(
        slotID: CK_SLOT_ID,
        pPin: *mut CK_UTF8CHAR,
        ulPinLen: CK_ULONG,
        pLabel: *mut CK_UTF8CHAR,
    ) {
        let m = module()?;
        let pin = opt_bytes(pPin, ulPinLen)?;
        if pLabel.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        let label = std::ptr::read_unaligned(pLabel as *const [u8; 32]);
        m.slot(slotID)?.init_token(pin, &label)
    }
);

cryptoki_fn!(
    fn C_InitPIN(hSession: CK_SESSION_HANDLE, pPin: *mut CK_UTF8CHAR, ulPinLen: CK_ULONG) {
        let m = module()?;
        let pin = opt_bytes(pPin, ulPinLen)?;
        m.init_pin(hSession, pin)
    }
);

cryptoki_fn!(
    fn C_SetPIN(
        hSession: CK_SESSION_HANDLE,
        pOldPin: *mut CK_UTF8CHAR,
        ulOldLen: CK_ULONG,
        pNewPin: *mut CK_UTF8CHAR,
        ulNewLen: CK_ULONG,
    ) {
        let m = module()?;
        let old = opt_bytes(pOldPin, ulOldLen)?;
        let new = opt_bytes(pNewPin, ulNewLen)?;
        m.set_pin(hSession, old, new)
    }
);

cryptoki_fn!(
    fn C_WaitForSlotEvent(flags: CK_FLAGS, pSlot: *mut CK_SLOT_ID, pReserved: *mut c_void) {
        module()?;
        if pSlot.is_null() || !pReserved.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        if flags & CKF_DONT_BLOCK != 0 {
            // Slots are fixed at C_Initialize: there is never an event.
            return Err(Error::new(CKR_NO_EVENT));
        }
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
);

// ---------------------------------------------------------------- sessions

cryptoki_fn!(
    fn C_OpenSession(
        slotID: CK_SLOT_ID,
        flags: CK_FLAGS,
        _pApplication: *mut c_void,
        _Notify: CK_NOTIFY,
        phSession: *mut CK_SESSION_HANDLE,
    ) {
        let m = module()?;
        if phSession.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        let h = m.open_session(slotID, flags)?;
        put(phSession, h)
    }
);

cryptoki_fn!(
    fn C_CloseSession(hSession: CK_SESSION_HANDLE) {
        module()?.close_session(hSession)
    }
);

cryptoki_fn!(
    fn C_CloseAllSessions(slotID: CK_SLOT_ID) {
        module()?.close_all_sessions(slotID)
    }
);

cryptoki_fn!(
    fn C_GetSessionInfo(hSession: CK_SESSION_HANDLE, pInfo: *mut CK_SESSION_INFO) {
        let m = module()?;
        if pInfo.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        let (s, slot) = m.session_slot(hSession)?;
        put(pInfo, s.info(slot))
    }
);

cryptoki_fn!(
    fn C_GetOperationState(
        hSession: CK_SESSION_HANDLE,
        pOperationState: *mut CK_BYTE,
        pulOperationStateLen: *mut CK_ULONG,
    ) {
        let m = module()?;
        let mut out = OutBuf::new(pOperationState, pulOperationStateLen)?;
        let r = m.get_operation_state(hSession, out.buf());
        out.finish(r)
    }
);

cryptoki_fn!(
    fn C_SetOperationState(
        hSession: CK_SESSION_HANDLE,
        pOperationState: *mut CK_BYTE,
        ulOperationStateLen: CK_ULONG,
        hEncryptionKey: CK_OBJECT_HANDLE,
        hAuthenticationKey: CK_OBJECT_HANDLE,
    ) {
        let m = module()?;
        let state = in_bytes(pOperationState, ulOperationStateLen)?;
        m.set_operation_state(hSession, state, hEncryptionKey, hAuthenticationKey)
    }
);

cryptoki_fn!(
    fn C_Login(
        hSession: CK_SESSION_HANDLE,
        userType: CK_USER_TYPE,
        pPin: *mut CK_UTF8CHAR,
        ulPinLen: CK_ULONG,
    ) {
        let m = module()?;
        let pin = opt_bytes(pPin, ulPinLen)?;
        m.login(hSession, userType, pin, None)
    }
);

cryptoki_fn!(
    fn C_LoginUser(
        hSession: CK_SESSION_HANDLE,
        userType: CK_USER_TYPE,
        pPin: *mut CK_UTF8CHAR,
        ulPinLen: CK_ULONG,
        pUsername: *mut CK_UTF8CHAR,
        ulUsernameLen: CK_ULONG,
    ) {
        let m = module()?;
        let pin = opt_bytes(pPin, ulPinLen)?;
        let name = in_bytes(pUsername, ulUsernameLen)?;
        m.login(hSession, userType, pin, Some(name))
    }
);

cryptoki_fn!(
    fn C_Logout(hSession: CK_SESSION_HANDLE) {
        module()?.logout(hSession)
    }
);

cryptoki_fn!(
    fn C_SessionCancel(hSession: CK_SESSION_HANDLE, flags: CK_FLAGS) {
        module()?.session_cancel(hSession, flags)
    }
);

// ---------------------------------------------------------------- objects

cryptoki_fn!(
    fn C_CreateObject(
        hSession: CK_SESSION_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
        phObject: *mut CK_OBJECT_HANDLE,
    ) {
        let m = module()?;
        let t = template(pTemplate, ulCount, true)?;
        if phObject.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        put(phObject, m.create_object(hSession, t)?)
    }
);

cryptoki_fn!(
    fn C_CopyObject(
        hSession: CK_SESSION_HANDLE,
        hObject: CK_OBJECT_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
        phNewObject: *mut CK_OBJECT_HANDLE,
    ) {
        let m = module()?;
        let t = template(pTemplate, ulCount, false)?;
        if phNewObject.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        put(phNewObject, m.copy_object(hSession, hObject, t)?)
    }
);

cryptoki_fn!(
    fn C_DestroyObject(hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE) {
        module()?.destroy_object(hSession, hObject)
    }
);

cryptoki_fn!(
    fn C_GetObjectSize(
        hSession: CK_SESSION_HANDLE,
        hObject: CK_OBJECT_HANDLE,
        pulSize: *mut CK_ULONG,
    ) {
        let m = module()?;
        if pulSize.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        put(pulSize, m.object_size(hSession, hObject)?)
    }
);

cryptoki_fn!(
    fn C_GetAttributeValue(
        hSession: CK_SESSION_HANDLE,
        hObject: CK_OBJECT_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
    ) {
        let m = module()?;
        let t = template_mut(pTemplate, ulCount)?;
        Error::check(m.get_attributes(hSession, hObject, t)?)
    }
);

cryptoki_fn!(
    fn C_SetAttributeValue(
        hSession: CK_SESSION_HANDLE,
        hObject: CK_OBJECT_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
    ) {
        let m = module()?;
        let t = template(pTemplate, ulCount, true)?;
        m.set_attributes(hSession, hObject, t)
    }
);

cryptoki_fn!(
    fn C_FindObjectsInit(
        hSession: CK_SESSION_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
    ) {
        let m = module()?;
        let t = template(pTemplate, ulCount, false)?;
        m.find_init(hSession, t)
    }
);

cryptoki_fn!(
    fn C_FindObjects(
        hSession: CK_SESSION_HANDLE,
        phObject: *mut CK_OBJECT_HANDLE,
        ulMaxObjectCount: CK_ULONG,
        pulObjectCount: *mut CK_ULONG,
    ) {
        let m = module()?;
        if phObject.is_null() || pulObjectCount.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        let max = (ulMaxObjectCount as u128).min((MAX_LEN / 8) as u128) as usize;
        let out = if max == 0 {
            &mut []
        } else {
            std::slice::from_raw_parts_mut(phObject, max)
        };
        let n = m.find_next(hSession, out)?;
        put(pulObjectCount, n as CK_ULONG)
    }
);

cryptoki_fn!(
    fn C_FindObjectsFinal(hSession: CK_SESSION_HANDLE) {
        module()?.find_final(hSession)
    }
);

// ---------------------------------------------------------------- cryptographic operations

/// Argument checks of a call that belongs to an active operation: a refusal ends the operation (spec §5.2: only
/// `CKR_BUFFER_TOO_SMALL` and a successful length query keep it).
fn checked<T>(m: &core::Module, h: CK_SESSION_HANDLE, kind: OpKind, r: Result<T>) -> Result<T> {
    if r.is_err() {
        m.op_abort(h, kind);
    }
    r
}

/// The shapes shared by the single-key operations.
unsafe fn init(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p: *mut CK_MECHANISM,
    key: Option<CK_OBJECT_HANDLE>,
) -> Result<()> {
    let m = module()?;
    let mech = mechanism(p)?;
    m.op_init(h, kind, mech, key)
}

unsafe fn single(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p: *mut u8,
    n: CK_ULONG,
    out: *mut u8,
    pout: *mut CK_ULONG,
) -> Result<()> {
    let m = module()?;
    let input = checked(&m, h, kind, in_bytes(p, n))?;
    let mut o = checked(&m, h, kind, OutBuf::new(out, pout))?;
    let r = m.op_single(h, kind, input, o.buf());
    o.finish(r)
}

unsafe fn update_out(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p: *mut u8,
    n: CK_ULONG,
    out: *mut u8,
    pout: *mut CK_ULONG,
) -> Result<()> {
    let m = module()?;
    let input = checked(&m, h, kind, in_bytes(p, n))?;
    let mut o = checked(&m, h, kind, OutBuf::new(out, pout))?;
    let r = m.op_update(h, kind, input, o.buf());
    o.finish(r)
}

unsafe fn update(h: CK_SESSION_HANDLE, kind: OpKind, p: *mut u8, n: CK_ULONG) -> Result<()> {
    let m = module()?;
    let input = checked(&m, h, kind, in_bytes(p, n))?;
    m.op_update(h, kind, input, None).map(|_| ())
}

unsafe fn finalize(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    out: *mut u8,
    pout: *mut CK_ULONG,
) -> Result<()> {
    let m = module()?;
    let mut o = checked(&m, h, kind, OutBuf::new(out, pout))?;
    let r = m.op_final(h, kind, o.buf());
    o.finish(r)
}

unsafe fn dual(
    h: CK_SESSION_HANDLE,
    kind: DualKind,
    p: *mut u8,
    n: CK_ULONG,
    out: *mut u8,
    pout: *mut CK_ULONG,
) -> Result<()> {
    let m = module()?;
    let input = in_bytes(p, n)?;
    let mut o = OutBuf::new(out, pout)?;
    let r = m.dual_update(h, kind, input, o.buf());
    o.finish(r)
}

/// `C_*Init` with a key.
unsafe fn init_with_key(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<()> {
    init(h, kind, p, Some(key))
}

/// `C_Verify` (`data` given) and `C_VerifyFinal`.
unsafe fn verify(
    h: CK_SESSION_HANDLE,
    data: Option<(*mut u8, CK_ULONG)>,
    sig: *mut u8,
    sig_len: CK_ULONG,
) -> Result<()> {
    let m = module()?;
    let data = match data {
        Some((p, n)) => Some(checked(&m, h, OpKind::Verify, in_bytes(p, n))?),
        None => None,
    };
    let sig = checked(&m, h, OpKind::Verify, in_bytes(sig, sig_len))?;
    m.verify(h, data, sig)
}

/// Entry points whose whole body is one of the shapes above, called with the session, the operation kind and the
/// remaining arguments in order: `fn C_Encrypt(hSession, ...) => single(OpKind::Encrypt);`.
macro_rules! op_entry_points {
    ($(fn $name:ident($h:ident: $hty:ty $(, $arg:ident: $ty:ty)* $(,)?) => $shape:ident($kind:expr);)*) => {$(
        cryptoki_fn!(
            fn $name($h: $hty $(, $arg: $ty)*) {
                $shape($h, $kind $(, $arg)*)
            }
        );
    )*};
}

op_entry_points! {
    fn C_EncryptInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE)
        => init_with_key(OpKind::Encrypt);
    fn C_Encrypt(hSession: CK_SESSION_HANDLE, pData: *mut CK_BYTE, ulDataLen: CK_ULONG,
        pEncryptedData: *mut CK_BYTE, pulEncryptedDataLen: *mut CK_ULONG) => single(OpKind::Encrypt);
    fn C_EncryptUpdate(hSession: CK_SESSION_HANDLE, pPart: *mut CK_BYTE, ulPartLen: CK_ULONG,
        pEncryptedPart: *mut CK_BYTE, pulEncryptedPartLen: *mut CK_ULONG) => update_out(OpKind::Encrypt);
    fn C_EncryptFinal(hSession: CK_SESSION_HANDLE, pLastEncryptedPart: *mut CK_BYTE,
        pulLastEncryptedPartLen: *mut CK_ULONG) => finalize(OpKind::Encrypt);

    fn C_DecryptInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE)
        => init_with_key(OpKind::Decrypt);
    fn C_Decrypt(hSession: CK_SESSION_HANDLE, pEncryptedData: *mut CK_BYTE, ulEncryptedDataLen: CK_ULONG,
        pData: *mut CK_BYTE, pulDataLen: *mut CK_ULONG) => single(OpKind::Decrypt);
    fn C_DecryptUpdate(hSession: CK_SESSION_HANDLE, pEncryptedPart: *mut CK_BYTE, ulEncryptedPartLen: CK_ULONG,
        pPart: *mut CK_BYTE, pulPartLen: *mut CK_ULONG) => update_out(OpKind::Decrypt);
    fn C_DecryptFinal(hSession: CK_SESSION_HANDLE, pLastPart: *mut CK_BYTE, pulLastPartLen: *mut CK_ULONG)
        => finalize(OpKind::Decrypt);

    fn C_Digest(hSession: CK_SESSION_HANDLE, pData: *mut CK_BYTE, ulDataLen: CK_ULONG, pDigest: *mut CK_BYTE,
        pulDigestLen: *mut CK_ULONG) => single(OpKind::Digest);
    fn C_DigestUpdate(hSession: CK_SESSION_HANDLE, pPart: *mut CK_BYTE, ulPartLen: CK_ULONG)
        => update(OpKind::Digest);
    fn C_DigestFinal(hSession: CK_SESSION_HANDLE, pDigest: *mut CK_BYTE, pulDigestLen: *mut CK_ULONG)
        => finalize(OpKind::Digest);

    fn C_SignInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE)
        => init_with_key(OpKind::Sign);
    fn C_Sign(hSession: CK_SESSION_HANDLE, pData: *mut CK_BYTE, ulDataLen: CK_ULONG, pSignature: *mut CK_BYTE,
        pulSignatureLen: *mut CK_ULONG) => single(OpKind::Sign);
    fn C_SignUpdate(hSession: CK_SESSION_HANDLE, pPart: *mut CK_BYTE, ulPartLen: CK_ULONG)
        => update(OpKind::Sign);
    fn C_SignFinal(hSession: CK_SESSION_HANDLE, pSignature: *mut CK_BYTE, pulSignatureLen: *mut CK_ULONG)
        => finalize(OpKind::Sign);
    fn C_SignRecoverInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE)
        => init_with_key(OpKind::SignRecover);
    fn C_SignRecover(hSession: CK_SESSION_HANDLE, pData: *mut CK_BYTE, ulDataLen: CK_ULONG,
        pSignature: *mut CK_BYTE, pulSignatureLen: *mut CK_ULONG) => single(OpKind::SignRecover);

    fn C_VerifyInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE)
        => init_with_key(OpKind::Verify);
    fn C_VerifyUpdate(hSession: CK_SESSION_HANDLE, pPart: *mut CK_BYTE, ulPartLen: CK_ULONG)
        => update(OpKind::Verify);
    fn C_VerifyRecoverInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE)
        => init_with_key(OpKind::VerifyRecover);
    fn C_VerifyRecover(hSession: CK_SESSION_HANDLE, pSignature: *mut CK_BYTE, ulSignatureLen: CK_ULONG,
        pData: *mut CK_BYTE, pulDataLen: *mut CK_ULONG) => single(OpKind::VerifyRecover);

    fn C_DigestEncryptUpdate(hSession: CK_SESSION_HANDLE, pPart: *mut CK_BYTE, ulPartLen: CK_ULONG,
        pEncryptedPart: *mut CK_BYTE, pulEncryptedPartLen: *mut CK_ULONG) => dual(DualKind::DigestEncrypt);
    fn C_DecryptDigestUpdate(hSession: CK_SESSION_HANDLE, pEncryptedPart: *mut CK_BYTE,
        ulEncryptedPartLen: CK_ULONG, pPart: *mut CK_BYTE, pulPartLen: *mut CK_ULONG)
        => dual(DualKind::DecryptDigest);
    fn C_SignEncryptUpdate(hSession: CK_SESSION_HANDLE, pPart: *mut CK_BYTE, ulPartLen: CK_ULONG,
        pEncryptedPart: *mut CK_BYTE, pulEncryptedPartLen: *mut CK_ULONG) => dual(DualKind::SignEncrypt);
    fn C_DecryptVerifyUpdate(hSession: CK_SESSION_HANDLE, pEncryptedPart: *mut CK_BYTE,
        ulEncryptedPartLen: CK_ULONG, pPart: *mut CK_BYTE, pulPartLen: *mut CK_ULONG)
        => dual(DualKind::DecryptVerify);
}

cryptoki_fn!(
    fn C_DigestInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM) {
        init(hSession, OpKind::Digest, pMechanism, None)
    }
);
cryptoki_fn!(
    fn C_DigestKey(hSession: CK_SESSION_HANDLE, hKey: CK_OBJECT_HANDLE) {
        module()?.digest_key(hSession, hKey)
    }
);
cryptoki_fn!(
    fn C_Verify(
        hSession: CK_SESSION_HANDLE,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pSignature: *mut CK_BYTE,
        ulSignatureLen: CK_ULONG,
    ) {
        verify(
            hSession,
            Some((pData, ulDataLen)),
            pSignature,
            ulSignatureLen,
        )
    }
);
cryptoki_fn!(
    fn C_VerifyFinal(
        hSession: CK_SESSION_HANDLE,
        pSignature: *mut CK_BYTE,
        ulSignatureLen: CK_ULONG,
    ) {
        verify(hSession, None, pSignature, ulSignatureLen)
    }
);

// ---------------------------------------------------------------- keys

cryptoki_fn!(
    fn C_GenerateKey(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
        phKey: *mut CK_OBJECT_HANDLE,
    ) {
        let m = module()?;
        let mech = mechanism_req(pMechanism)?;
        let t = template(pTemplate, ulCount, false)?;
        if phKey.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        put(phKey, m.generate_key(hSession, mech, t)?)
    }
);

cryptoki_fn!(
    fn C_GenerateKeyPair(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        pPublicKeyTemplate: *mut CK_ATTRIBUTE,
        ulPublicKeyAttributeCount: CK_ULONG,
        pPrivateKeyTemplate: *mut CK_ATTRIBUTE,
        ulPrivateKeyAttributeCount: CK_ULONG,
        phPublicKey: *mut CK_OBJECT_HANDLE,
        phPrivateKey: *mut CK_OBJECT_HANDLE,
    ) {
        let m = module()?;
        let mech = mechanism_req(pMechanism)?;
        let tp = template(pPublicKeyTemplate, ulPublicKeyAttributeCount, false)?;
        let ts = template(pPrivateKeyTemplate, ulPrivateKeyAttributeCount, false)?;
        if phPublicKey.is_null() || phPrivateKey.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        let (hp, hs) = m.generate_key_pair(hSession, mech, tp, ts)?;
        put(phPublicKey, hp)?;
        put(phPrivateKey, hs)
    }
);

cryptoki_fn!(
    fn C_WrapKey(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        hWrappingKey: CK_OBJECT_HANDLE,
        hKey: CK_OBJECT_HANDLE,
        pWrappedKey: *mut CK_BYTE,
        pulWrappedKeyLen: *mut CK_ULONG,
    ) {
        let m = module()?;
        let mech = mechanism_req(pMechanism)?;
        let mut o = OutBuf::new(pWrappedKey, pulWrappedKeyLen)?;
        let r = m.wrap_key(hSession, mech, hWrappingKey, hKey, o.buf());
        o.finish(r)
    }
);

cryptoki_fn!(
    fn C_UnwrapKey(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        hUnwrappingKey: CK_OBJECT_HANDLE,
        pWrappedKey: *mut CK_BYTE,
        ulWrappedKeyLen: CK_ULONG,
        pTemplate: *mut CK_ATTRIBUTE,
        ulAttributeCount: CK_ULONG,
        phKey: *mut CK_OBJECT_HANDLE,
    ) {
        let m = module()?;
        let mech = mechanism_req(pMechanism)?;
        let wrapped = in_bytes(pWrappedKey, ulWrappedKeyLen)?;
        let t = template(pTemplate, ulAttributeCount, false)?;
        if phKey.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        put(
            phKey,
            m.unwrap_key(hSession, mech, hUnwrappingKey, wrapped, t)?,
        )
    }
);

cryptoki_fn!(
    fn C_DeriveKey(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        hBaseKey: CK_OBJECT_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulAttributeCount: CK_ULONG,
        phKey: *mut CK_OBJECT_HANDLE,
    ) {
        let m = module()?;
        let mech = mechanism_req(pMechanism)?;
        let t = template(pTemplate, ulAttributeCount, false)?;
        if phKey.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        put(phKey, m.derive_key(hSession, mech, hBaseKey, t)?)
    }
);

// ---------------------------------------------------------------- random numbers

cryptoki_fn!(
    fn C_SeedRandom(hSession: CK_SESSION_HANDLE, pSeed: *mut CK_BYTE, ulSeedLen: CK_ULONG) {
        let m = module()?;
        let seed = in_bytes(pSeed, ulSeedLen)?;
        m.seed_random(hSession, seed)
    }
);

cryptoki_fn!(
    fn C_GenerateRandom(
        hSession: CK_SESSION_HANDLE,
        RandomData: *mut CK_BYTE,
        ulRandomLen: CK_ULONG,
    ) {
        let m = module()?;
        if RandomData.is_null() || ulRandomLen as u128 > MAX_LEN as u128 {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        let out = if ulRandomLen == 0 {
            &mut []
        } else {
            std::slice::from_raw_parts_mut(RandomData, ulRandomLen as usize)
        };
        m.generate_random(hSession, out)
    }
);

// ---------------------------------------------------------------- legacy parallel functions

cryptoki_fn!(
    fn C_GetFunctionStatus(hSession: CK_SESSION_HANDLE) {
        module()?.session(hSession)?;
        Err(Error::new(CKR_FUNCTION_NOT_PARALLEL))
    }
);

cryptoki_fn!(
    fn C_CancelFunction(hSession: CK_SESSION_HANDLE) {
        module()?.session(hSession)?;
        Err(Error::new(CKR_FUNCTION_NOT_PARALLEL))
    }
);

// ---------------------------------------------------------------- 3.0 message-based functions

/// One message's `CK_GCM_MESSAGE_PARAMS` as views of the caller's memory.
///
/// # Safety
/// `p` must point to `pl` bytes; the IV and tag pointers inside must be valid for their lengths (caller's contract).
unsafe fn gcm_message<'a>(p: *mut c_void, pl: CK_ULONG) -> Result<core::GcmMessage<'a>> {
    if p.is_null() {
        return Err(Error::new(CKR_ARGUMENTS_BAD));
    }
    if pl as usize != std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() {
        return Err(Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            "the message parameter is not a CK_GCM_MESSAGE_PARAMS",
        ));
    }
    let g = std::ptr::read_unaligned(p as *const CK_GCM_MESSAGE_PARAMS);
    if !g.ulTagBits.is_multiple_of(8) || g.ulTagBits > 128 {
        return Err(Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            "ulTagBits: a multiple of 8, at most 128",
        ));
    }
    if g.pIv.is_null() || g.pTag.is_null() || g.ulIvLen as u128 > MAX_LEN as u128 {
        return Err(Error::new(CKR_ARGUMENTS_BAD));
    }
    Ok(core::GcmMessage {
        iv: std::slice::from_raw_parts_mut(g.pIv, g.ulIvLen as usize),
        fixed_bits: g.ulIvFixedBits,
        generator: g.ivGenerator,
        tag: std::slice::from_raw_parts_mut(g.pTag, (g.ulTagBits / 8) as usize),
    })
}

/// `C_EncryptMessage` / `C_DecryptMessage`.
#[allow(clippy::too_many_arguments)]
unsafe fn message_one(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p: *mut c_void,
    pl: CK_ULONG,
    a: *mut CK_BYTE,
    al: CK_ULONG,
    d: *mut CK_BYTE,
    dl: CK_ULONG,
    o: *mut CK_BYTE,
    ol: *mut CK_ULONG,
) -> Result<()> {
    let m = module()?;
    m.session(h)?;
    let params = gcm_message(p, pl)?;
    let aad = if a.is_null() && al == 0 {
        &[][..]
    } else {
        in_bytes(a, al)?
    };
    let input = in_bytes(d, dl)?;
    let mut out = OutBuf::new(o, ol)?;
    let r = m.message_one(h, kind, params, aad, input, out.buf());
    out.finish(r)
}

/// `C_MessageEncryptInit` / `C_MessageDecryptInit`.
unsafe fn message_init(
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    p: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<()> {
    let m = module()?;
    m.session(h)?;
    let mech = mechanism_req(p)?;
    m.message_init(h, kind, &mech, key)
}

/// `C_MessageEncryptFinal` / `C_MessageDecryptFinal`.
fn message_final(h: CK_SESSION_HANDLE, kind: OpKind) -> Result<()> {
    module()?.message_final(h, kind)
}

// Message-based AES-GCM encryption and decryption, emulated over the key's backend (core/message.rs).
op_entry_points! {
    fn C_MessageEncryptInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE)
        => message_init(OpKind::Encrypt);
    fn C_EncryptMessage(hSession: CK_SESSION_HANDLE, pParameter: *mut c_void, ulParameterLen: CK_ULONG,
        pAssociatedData: *mut CK_BYTE, ulAssociatedDataLen: CK_ULONG, pPlaintext: *mut CK_BYTE,
        ulPlaintextLen: CK_ULONG, pCiphertext: *mut CK_BYTE, pulCiphertextLen: *mut CK_ULONG)
        => message_one(OpKind::Encrypt);
    fn C_MessageEncryptFinal(hSession: CK_SESSION_HANDLE) => message_final(OpKind::Encrypt);

    fn C_MessageDecryptInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE)
        => message_init(OpKind::Decrypt);
    fn C_DecryptMessage(hSession: CK_SESSION_HANDLE, pParameter: *mut c_void, ulParameterLen: CK_ULONG,
        pAssociatedData: *mut CK_BYTE, ulAssociatedDataLen: CK_ULONG, pCiphertext: *mut CK_BYTE,
        ulCiphertextLen: CK_ULONG, pPlaintext: *mut CK_BYTE, pulPlaintextLen: *mut CK_ULONG)
        => message_one(OpKind::Decrypt);
    fn C_MessageDecryptFinal(hSession: CK_SESSION_HANDLE) => message_final(OpKind::Decrypt);
}

// Multi-part messages and message-based signing: not supported (no mechanism carries CKF_MULTI_MESSAGE,
// CKF_MESSAGE_SIGN or CKF_MESSAGE_VERIFY).

macro_rules! not_supported {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        cryptoki_fn!(
            /// Not supported (see the README's support table).
            fn $name($($arg: $ty),*) {
                $(let _ = $arg;)*
                Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
            }
        );
    )*};
}

not_supported! {
    C_EncryptMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG);
    C_EncryptMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG,
        o: *mut CK_BYTE, ol: *mut CK_ULONG, f: CK_FLAGS);
    C_DecryptMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG);
    C_DecryptMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG,
        o: *mut CK_BYTE, ol: *mut CK_ULONG, f: CK_FLAGS);
    C_MessageSignInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_SignMessage(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG,
        s: *mut CK_BYTE, sl: *mut CK_ULONG);
    C_SignMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG);
    C_SignMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG,
        s: *mut CK_BYTE, sl: *mut CK_ULONG);
    C_MessageSignFinal(h: CK_SESSION_HANDLE);
    C_MessageVerifyInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_VerifyMessage(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG,
        s: *mut CK_BYTE, sl: CK_ULONG);
    C_VerifyMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG);
    C_VerifyMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG,
        s: *mut CK_BYTE, sl: CK_ULONG);
    C_MessageVerifyFinal(h: CK_SESSION_HANDLE);
}
