//! Object handles of one token: stable for the life of the object, never reused while the module is initialized.
//! With them, what the core has learnt of an object that cannot change while its handle lives (the EC keys whose
//! type and curve passed `keycheck::usable_ec_key`).

use cryptoki_sys::{CK_OBJECT_HANDLE, CK_RV};
use p11bridge_backends::{Error, ObjRef, Result};
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// Which backend of the token holds an object (its position in the slot's backend list) and its reference there.
pub type Located = (usize, ObjRef);

pub struct Handles {
    map: Map,
    /// Objects known to be `CKK_EC` keys with a usable curve (`CKA_KEY_TYPE` and `CKA_EC_PARAMS` cannot be
    /// changed once an object exists: spec §4.1.2 / the EC key tables), so an EC mechanism's init reads them once
    /// per object, not once per call. Forgotten with the handle.
    ec_keys: RwLock<HashSet<Located>>,
}

enum Map {
    /// A mirror slot: the upstream's handles, unchanged (so handles inside mechanism parameters stay valid).
    Identity,
    /// A unified slot: bridge handles from a counter, mapped both ways.
    Table(Table),
}

#[derive(Default)]
pub struct Table {
    maps: RwLock<Maps>,
    next: AtomicU64,
}

#[derive(Default)]
struct Maps {
    fwd: HashMap<CK_OBJECT_HANDLE, Located>,
    rev: HashMap<Located, CK_OBJECT_HANDLE>,
}

impl Handles {
    pub fn table() -> Self {
        Handles {
            map: Map::Table(Table {
                maps: RwLock::default(),
                next: AtomicU64::new(1),
            }),
            ec_keys: RwLock::default(),
        }
    }

    pub fn identity() -> Self {
        Handles {
            map: Map::Identity,
            ec_keys: RwLock::default(),
        }
    }

    /// Whether these are the bridge's own handles (a table), which the core translates to the backends' — also
    /// inside mechanism parameters — and forgets with their session objects.
    pub fn translated(&self) -> bool {
        matches!(self.map, Map::Table(_))
    }

    pub fn resolve(&self, h: CK_OBJECT_HANDLE) -> Option<Located> {
        match &self.map {
            Map::Identity => (h != 0).then_some((0, h as ObjRef)),
            Map::Table(t) => t.maps.read().fwd.get(&h).copied(),
        }
    }

    /// Whether the object was found to be an EC key with a usable curve.
    pub fn ec_key_checked(&self, loc: Located) -> bool {
        self.ec_keys.read().contains(&loc)
    }

    /// Remembers that the object is an EC key with a usable curve.
    pub fn ec_key_passed(&self, loc: Located) {
        self.ec_keys.write().insert(loc);
    }

    /// Where the object of handle `h` lives, or the error `invalid` (`CKR_OBJECT_HANDLE_INVALID`,
    /// `CKR_KEY_HANDLE_INVALID`, ...) that the calling function's specification names.
    pub fn locate(&self, h: CK_OBJECT_HANDLE, invalid: CK_RV) -> Result<Located> {
        self.resolve(h).ok_or(Error::new(invalid))
    }

    /// The bridge handle of a backend object, allocating one the first time it is seen.
    pub fn intern(&self, loc: Located) -> CK_OBJECT_HANDLE {
        match &self.map {
            Map::Identity => loc.1 as CK_OBJECT_HANDLE,
            Map::Table(t) => {
                if let Some(h) = t.maps.read().rev.get(&loc) {
                    return *h;
                }
                let mut m = t.maps.write();
                if let Some(h) = m.rev.get(&loc) {
                    return *h;
                }
                let h = t.next.fetch_add(1, Ordering::Relaxed) as CK_OBJECT_HANDLE;
                m.fwd.insert(h, loc);
                m.rev.insert(loc, h);
                h
            }
        }
    }

    /// Forgets a handle whose object is gone (destroyed, or a session object whose session closed).
    pub fn forget(&self, h: CK_OBJECT_HANDLE) {
        let loc = match &self.map {
            Map::Identity => Some((0, h as ObjRef)),
            Map::Table(t) => {
                let mut m = t.maps.write();
                let loc = m.fwd.remove(&h);
                if let Some(loc) = loc {
                    m.rev.remove(&loc);
                }
                loc
            }
        };
        if let Some(loc) = loc {
            if self.ec_key_checked(loc) {
                self.ec_keys.write().remove(&loc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_stable_and_never_reused() {
        let t = Handles::table();
        let a = t.intern((0, 7));
        assert_eq!(t.intern((0, 7)), a);
        let b = t.intern((1, 7));
        assert_ne!(a, b);
        t.forget(a);
        assert!(t.resolve(a).is_none());
        let c = t.intern((0, 7));
        assert!(c != a && c != b);
        assert_eq!(t.resolve(c), Some((0, 7)));
    }

    #[test]
    fn an_ec_verdict_goes_with_its_handle() {
        for t in [Handles::table(), Handles::identity()] {
            let h = t.intern((0, 9));
            let loc = t.resolve(h).unwrap();
            assert!(!t.ec_key_checked(loc));
            t.ec_key_passed(loc);
            assert!(t.ec_key_checked(loc));
            t.forget(h);
            assert!(!t.ec_key_checked(loc));
        }
    }
}
