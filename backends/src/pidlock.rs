//! A lock that survives `fork()`: its owner is a process id, so a child that inherited it locked (because another
//! thread of the parent held it at the moment of the fork) takes it over instead of waiting forever.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct PidLock<T> {
    owner: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialized by `owner` (one holder at a time within a process).
unsafe impl<T: Send> Sync for PidLock<T> {}
unsafe impl<T: Send> Send for PidLock<T> {}

pub struct PidLockGuard<'a, T> {
    lock: &'a PidLock<T>,
}

impl<T> PidLock<T> {
    pub const fn new(value: T) -> Self {
        PidLock {
            owner: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock; waits while another thread of this process holds it.
    pub fn lock(&self) -> PidLockGuard<'_, T> {
        let me = std::process::id();
        let mut spins = 0u32;
        loop {
            let cur = self.owner.load(Ordering::Acquire);
            if (cur == 0 || cur != me)
                && self
                    .owner
                    .compare_exchange(cur, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // cur != me and != 0: held by the process we were forked from; that holder does not exist here.
                return PidLockGuard { lock: self };
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    }
}

impl<T> std::ops::Deref for PidLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for PidLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the lock exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for PidLockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.owner.store(0, Ordering::Release);
    }
}
