//! Object handles of one token: stable for the life of the object, never reused while the module is initialized.

use cryptoki_sys::{CK_OBJECT_HANDLE, CK_RV};
use p11bridge_backends::{Error, ObjRef, Result};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which backend of the token holds an object (its position in the slot's backend list) and its reference there.
pub type Located = (usize, ObjRef);

pub enum Handles {
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
        Handles::Table(Table {
            maps: RwLock::default(),
            next: AtomicU64::new(1),
        })
    }

    /// Whether these are the bridge's own handles (a table), which the core translates to the backends' — also
    /// inside mechanism parameters — and forgets with their session objects.
    pub fn translated(&self) -> bool {
        matches!(self, Handles::Table(_))
    }

    pub fn resolve(&self, h: CK_OBJECT_HANDLE) -> Option<Located> {
        match self {
            Handles::Identity => (h != 0).then_some((0, h as ObjRef)),
            Handles::Table(t) => t.maps.read().fwd.get(&h).copied(),
        }
    }

    /// Where the object of handle `h` lives, or the error `invalid` (`CKR_OBJECT_HANDLE_INVALID`,
    /// `CKR_KEY_HANDLE_INVALID`, ...) that the calling function's specification names.
    pub fn locate(&self, h: CK_OBJECT_HANDLE, invalid: CK_RV) -> Result<Located> {
        self.resolve(h).ok_or(Error::new(invalid))
    }

    /// The bridge handle of a backend object, allocating one the first time it is seen.
    pub fn intern(&self, loc: Located) -> CK_OBJECT_HANDLE {
        match self {
            Handles::Identity => loc.1 as CK_OBJECT_HANDLE,
            Handles::Table(t) => {
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
        if let Handles::Table(t) = self {
            let mut m = t.maps.write();
            if let Some(loc) = m.fwd.remove(&h) {
                m.rev.remove(&loc);
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
}
