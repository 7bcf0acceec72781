//! The pass-through rows: the bridge's unified token over SoftHSM2 vs SoftHSM2's own function list (same process,
//! same token, both through raw PKCS#11 calls), 1 and 2 threads on separate sessions.

use crate::pkcs11::{find, Module, Op};
use crate::table::{print_row, Row};
use crate::Bench;
use cryptoki_sys::*;

/// One row: `pick` chooses the operation on a session, run on both sides, rounds interleaved.
fn pass_through(
    b: &Bench,
    name: &str,
    pick: fn(&'static Module, CK_SESSION_HANDLE) -> Op,
    threads: usize,
    iters: usize,
) {
    let mut row = Row::new(name, threads);
    for _ in 0..b.opts.rounds {
        row.direct
            .add(b.op_round(b.direct_side(), pick, threads, iters));
        row.bridge
            .add(b.op_round(b.bridge_side(), pick, threads, iters));
    }
    print_row(&mut row);
}

pub fn rows(b: &Bench) {
    let o = &b.opts;
    for threads in [1, 2] {
        pass_through(
            b,
            "SoftHSM C_Sign ECDSA P-256",
            |m, s| Op::Sign(CKM_ECDSA, find(m, s, "ec-p256", CKO_PRIVATE_KEY), 32),
            threads,
            o.iters(100),
        );
        pass_through(
            b,
            "SoftHSM C_Sign RSA-2048 PKCS#1",
            |m, s| {
                Op::Sign(
                    CKM_SHA256_RSA_PKCS,
                    find(m, s, "rsa-2048", CKO_PRIVATE_KEY),
                    32,
                )
            },
            threads,
            o.iters(25),
        );
        pass_through(
            b,
            "SoftHSM C_Encrypt AES-GCM 1 KiB",
            |m, s| Op::GcmEncrypt(find(m, s, "aes-256", CKO_SECRET_KEY)),
            threads,
            o.iters(1000),
        );
        pass_through(
            b,
            "SoftHSM C_GetAttributeValue LABEL",
            |m, s| Op::GetLabel(find(m, s, "ec-p256", CKO_PRIVATE_KEY)),
            threads,
            o.iters(5000),
        );
        pass_through(
            b,
            "SoftHSM C_FindObjects by label",
            |_, _| Op::FindByLabel,
            threads,
            o.iters(1000),
        );
    }
}
