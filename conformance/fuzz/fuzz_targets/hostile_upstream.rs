//! Fuzz target: a hostile upstream PKCS#11 module. p11bridge (linked as an rlib) is configured with a unified
//! slot and a mirror slot over a `pkcs11` backend whose module is `hostile-module` (built by run.sh; path in
//! `HOSTILE_MODULE`, default `$CARGO_TARGET_DIR/fuzz/hostile-module/release/libp11bridge_hostile_module.so`).
//! Every answer of that module — return codes (undefined ones too), slot lists, token/mechanism/session
//! information, object handles and counts, attribute values and the lengths it reports for them, output lengths of
//! signatures, ciphertexts and digests — comes from the input's backend part, handed to it through its exported
//! `hostile_set_script`. The module never writes beyond the lengths it is given; the lengths it returns lie.
//! Per input: C_Initialize, the call sequence of `hostile::drive` on the unified or the mirror slot, C_Finalize.
#![no_main]

#[path = "hostile/mod.rs"]
mod hostile;

use hostile::*;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

type SetScript = unsafe extern "C" fn(*const u8, usize);

struct Setup {
    f: &'static cryptoki_sys::CK_FUNCTION_LIST,
    set: SetScript,
    _lib: libloading::Library,
}

fn module_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("HOSTILE_MODULE") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| p11bridge_conformance::env::repo_root().join("target"));
    target.join("fuzz/hostile-module/release/libp11bridge_hostile_module.so")
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let module = module_path();
        assert!(
            module.exists(),
            "{} missing: build conformance/fuzz/hostile-module (run.sh does)",
            module.display()
        );
        // Loaded here first and kept loaded: the bridge's dlopen of the same path gets this same instance, whose
        // script setter we call.
        let lib = unsafe { libloading::Library::new(&module) }.expect("load hostile module");
        let set: SetScript = unsafe {
            *lib.get::<SetScript>(b"hostile_set_script\0")
                .expect("setter")
        };
        let dir = work_dir("hostile-upstream");
        let cfg = dir.join("p11bridge.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[[slot]]
label = "unified"
user_pin = "env:P11BRIDGE_PIN"
backends = ["hsm"]

[[slot]]
mirror = "hsm"

[backend.hsm]
kind = "pkcs11"
module = "{}"
token_label = "upstream"
pin = "env:HSM_PIN"
"#,
                module.display()
            ),
        )
        .expect("write config");
        std::env::set_var("P11BRIDGE_CONFIG", &cfg);
        std::env::set_var("P11BRIDGE_PIN", "fuzz-pin-1234");
        std::env::set_var("HSM_PIN", "1234");
        Setup {
            f: function_list(),
            set,
            _lib: lib,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let (client, server) = split(data);
    unsafe { (s.set)(server.as_ptr(), server.len()) };
    let mut r = R::new(client);
    // The mirror slot's PIN is the upstream's.
    let mirror = r.u8() % 2 == 1;
    let pin: &[u8] = if mirror { b"1234" } else { b"fuzz-pin-1234" };
    run_once(s.f, &mut r, pin, mirror as usize, true);
    unsafe { (s.set)(std::ptr::null(), 0) };
});
