//! The AWS KMS rows: `C_Sign` ECDSA P-256 through the bridge vs a direct `Sign` to the same moto endpoint (by
//! default the lean blocking client of `lean.rs`, SigV4-signed; `--kms-baseline sdk` aws-sdk-kms with the bridge's
//! HTTPS client), 1 and 8 threads; and the direct client's side of the KMS enumeration row.

use crate::measure::round;
use crate::pkcs11::{find, Op};
use crate::table::{print_row, Row};
use crate::Bench;
use cryptoki_sys::*;
use std::sync::Arc;

/// The direct KMS client: aws-sdk-kms with the same HTTPS client as the bridge, to the same endpoint.
pub fn kms_client(rt: &tokio::runtime::Runtime, url: &str) -> aws_sdk_kms::Client {
    rt.block_on(async {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(p11bridge_backends::kms::http_client(None))
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(&conf)
                .endpoint_url(url)
                .build(),
        )
    })
}

/// What the bridge's KMS enumeration needs, one request at a time: aliases, keys, and each key's metadata and
/// public key.
pub async fn direct_kms_enum(c: aws_sdk_kms::Client) {
    let mut marker = None;
    loop {
        let r = c
            .list_aliases()
            .limit(100)
            .set_marker(marker.take())
            .send()
            .await
            .expect("aliases");
        match (r.truncated(), r.next_marker()) {
            (true, Some(m)) => marker = Some(m.to_string()),
            _ => break,
        }
    }
    let mut ids = Vec::new();
    loop {
        let r = c
            .list_keys()
            .limit(1000)
            .set_marker(marker.take())
            .send()
            .await
            .expect("keys");
        ids.extend(
            r.keys()
                .iter()
                .filter_map(|k| k.key_id().map(str::to_owned)),
        );
        match (r.truncated(), r.next_marker()) {
            (true, Some(m)) => marker = Some(m.to_string()),
            _ => break,
        }
    }
    for id in ids {
        c.describe_key().key_id(&id).send().await.expect("describe");
        c.get_public_key()
            .key_id(&id)
            .send()
            .await
            .expect("public key");
    }
}

pub fn rows(b: &Bench, kc: &aws_sdk_kms::Client, endpoint: &'static str) {
    let krt = b.runtime;
    for threads in [1, 8] {
        let n = b.opts.iters(if threads == 1 { 50 } else { 12 });
        let mut row = Row::new("KMS C_Sign ECDSA P-256", threads);
        for _ in 0..b.opts.rounds {
            let st = if b.opts.kms_sdk_baseline {
                let c = kc.clone();
                round(
                    threads,
                    n,
                    Arc::new(move |_| c.clone()),
                    Arc::new(move |c: &mut aws_sdk_kms::Client| {
                        let r = krt.block_on(
                            c.sign()
                                .key_id("alias/k-ec")
                                .message(aws_sdk_kms::primitives::Blob::new(vec![7u8; 32]))
                                .message_type(aws_sdk_kms::types::MessageType::Digest)
                                .signing_algorithm(
                                    aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256,
                                )
                                .send(),
                        );
                        assert!(r.expect("kms sign").signature().is_some());
                    }),
                )
            } else {
                round(
                    threads,
                    n,
                    Arc::new(move |_| crate::lean::agent()),
                    Arc::new(move |a: &mut ureq::Agent| {
                        // 32 bytes of 7, as the SDK baseline sends.
                        let r = crate::lean::kms_sign(
                            a,
                            endpoint,
                            "alias/k-ec",
                            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
                        );
                        assert!(r.contains("\"Signature\""), "{r}");
                    }),
                )
            };
            row.direct.add(st);
            row.bridge.add(b.op_round(
                b.bridge_side(),
                |m, s| Op::Sign(CKM_ECDSA, find(m, s, "k-ec", CKO_PRIVATE_KEY), 32),
                threads,
                n,
            ));
        }
        print_row(&mut row);
    }
}
