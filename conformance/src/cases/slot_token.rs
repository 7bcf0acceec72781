//! Invalid slot ids (§5.5 slot and token management).

use super::*;

// ------------------------------------------------------------------------------------------------ invalid slots

pub(super) fn invalid_slots(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let mut n: CK_ULONG = 0;
    chk!(
        c,
        f,
        CKR_OK,
        "all slots",
        C_GetSlotList(CK_FALSE, null_mut(), &mut n)
    );
    let mut si: CK_SLOT_INFO = zeroed();
    let mut ti: CK_TOKEN_INFO = zeroed();
    let mut mi: CK_MECHANISM_INFO = zeroed();
    let mut list = [0 as CK_ULONG; 256];
    let mut h: CK_SESSION_HANDLE = 0;
    let pin = b"12345678".as_ptr() as *mut u8;
    let mut label = [b' '; 32];
    let w = CKR_SLOT_ID_INVALID;
    for id in [n, 999, 0xdead_beef, CK_ULONG::MAX] {
        let case = if id == n {
            "slot <slot count>".to_string()
        } else {
            format!("slot {id:#x}")
        };
        let case = case.as_str();
        chk!(c, f, w, case, C_GetSlotInfo(id, &mut si));
        chk!(c, f, w, case, C_GetTokenInfo(id, &mut ti));
        let mut m: CK_ULONG = 256;
        chk!(
            c,
            f,
            w,
            case,
            C_GetMechanismList(id, list.as_mut_ptr(), &mut m)
        );
        chk!(c, f, w, case, C_GetMechanismList(id, null_mut(), &mut m));
        chk!(c, f, w, case, C_GetMechanismInfo(id, CKM_ECDSA, &mut mi));
        chk!(
            c,
            f,
            w,
            case,
            C_OpenSession(id, RW, null_mut(), None, &mut h)
        );
        chk!(
            c,
            f,
            w,
            case,
            C_OpenSession(id, RO, null_mut(), None, &mut h)
        );
        chk!(c, f, w, case, C_CloseAllSessions(id));
        chk!(c, f, w, case, C_InitToken(id, pin, 8, label.as_mut_ptr()));
    }
}
