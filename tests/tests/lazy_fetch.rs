//! Keys read on first use: with `discover = true` a first search by label lists the keys (KMS: `ListKeys` and
//! `ListAliases`; Vault: one `LIST`) and reads only the keys with that label (KMS: `GetPublicKey`; Vault: one
//! `GET`); their attributes read right and they sign (openssl verifies); a search for a label no key has reads
//! none; a search without a label reads the others. Requests are counted by moto's fidelity layer and OpenBao's
//! audit log. (`key_cache = false`: this is about one process; the host-wide cache is `host_key_cache.rs`.)

mod common;

use common::bao::bao;
use common::moto::moto;
use common::*;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};

fn setup() {
    static S: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let m = moto();
        for i in 0..6 {
            m.create_key(&format!("lz-k{i}"), "ECC_NIST_P256", "SIGN_VERIFY", &[]);
        }
        let b = bao();
        b.ok(&["secrets", "enable", "transit"]);
        for i in 0..6 {
            b.ok(&[
                "write",
                "-f",
                &format!("transit/keys/lz-v{i}"),
                "type=ecdsa-p256",
            ]);
        }
        env_kms_vault("lazy-fetch", "lz-", "key_cache = false");
    });
}

/// OpenBao's answered requests of this operation on a path containing `path` (its audit log).
fn vault_requests(op: &str, path: &str) -> usize {
    std::fs::read_to_string(&bao().audit)
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.contains("\"type\":\"request\"")
                        && l.contains(&format!("\"operation\":\"{op}\""))
                        && l.contains(path)
                })
                .count()
        })
        .unwrap_or(0)
}

fn on(b: &str) -> Attribute {
    Attribute::VendorDefined((
        AttributeType::VendorDefined(p11bridge_vendor::CKA_P11BRIDGE_BACKEND),
        b.as_bytes().to_vec(),
    ))
}

#[test]
fn a_search_by_label_reads_only_the_keys_with_that_label() {
    setup();
    let m = moto();
    m.reset();
    let list = || vault_requests("list", "transit/keys");
    let get = || vault_requests("read", "transit/keys/lz-");
    let (list0, get0) = (list(), get());
    let p = p11();
    let s = user_session(p);

    // KMS: the listing and one key.
    let found = s
        .find_objects(&[Attribute::Label("lz-k2".into()), on("kms")])
        .unwrap();
    assert_eq!(found.len(), 3, "private, public key and certificate");
    let stats = m.stats();
    assert_eq!(m.count("ListKeys"), 1, "{stats:?}");
    assert_eq!(m.count("ListAliases"), 1, "{stats:?}");
    assert_eq!(m.count("GetPublicKey"), 1, "only lz-k2: {stats:?}");
    assert_eq!(m.count("DescribeKey"), 0, "{stats:?}");
    // Its generated certificate is signed by the key (once; cached on disk afterwards).
    assert_eq!(m.total() - m.count("Sign"), 3, "{stats:?}");

    // Its attributes, and a signature openssl verifies: no request to read the key again.
    m.reset();
    let public = find_one(&s, "lz-k2", ObjectClass::PUBLIC_KEY);
    let point = s.get_attributes(public, &[AttributeType::EcPoint]).unwrap();
    assert!(
        matches!(&point[..], [Attribute::EcPoint(p)] if p.len() == 67),
        "{point:?}"
    );
    ecdsa_signs_on(p, "unified", "lz-k2");
    assert_eq!(m.count("GetPublicKey"), 0, "{:?}", m.stats());
    assert_eq!(m.count("ListKeys"), 0, "{:?}", m.stats());
    assert_eq!(m.count("Sign"), 1, "{:?}", m.stats());

    // A label no key has: nothing read.
    m.reset();
    assert!(s
        .find_objects(&[Attribute::Label("lz-none".into()), on("kms")])
        .unwrap()
        .is_empty());
    assert_eq!(m.total(), 0, "{:?}", m.stats());

    // Vault: LIST and one GET.
    let found = s
        .find_objects(&[Attribute::Label("lz-v3".into()), on("vault")])
        .unwrap();
    assert_eq!(found.len(), 3);
    assert_eq!(list() - list0, 1);
    assert_eq!(get() - get0, 1, "GET lz-v3 only");
    ecdsa_signs_on(p, "unified", "lz-v3");
    assert_eq!(get() - get0, 1);

    // A search without a label reads every other key (the key numbers, and so the handles, stay).
    m.reset();
    let all = s.find_objects(&[on("kms")]).unwrap();
    assert_eq!(all.len(), 6 * 3);
    assert!(found.iter().all(|h| !all.contains(h)));
    assert!(all.contains(&public));
    assert_eq!(m.count("GetPublicKey"), 5, "{:?}", m.stats());
    assert_eq!(m.count("ListKeys"), 0, "{:?}", m.stats());
    let vault_all = s.find_objects(&[on("vault")]).unwrap();
    assert_eq!(vault_all.len(), 6 * 3);
    assert!(found.iter().all(|h| vault_all.contains(h)));
    assert_eq!(get() - get0, 6);
    assert_eq!(list() - list0, 1);
}
