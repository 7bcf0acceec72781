//! Loading an upstream PKCS#11 module: one entry per module path, initialized once per process, never unloaded
//! (unloading a PKCS#11 module under a live application is never safe). After `fork()` the child re-initializes it.

use crate::pidlock::PidLock;
use crate::{current_pid, BuildContext, Error, Result};
use cryptoki_sys::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded upstream module and its function lists.
pub struct Lib {
    pub path: PathBuf,
    fl: *const CK_FUNCTION_LIST,
    fl3: *const CK_FUNCTION_LIST_3_0,
}

// SAFETY: the function lists are immutable tables owned by the (never unloaded) module; PKCS#11 modules initialized
// with CKF_OS_LOCKING_OK are called from any thread.
unsafe impl Send for Lib {}
unsafe impl Sync for Lib {}

impl Lib {
    /// The 2.40 function list.
    pub fn f(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: non-null (checked at load) and valid for the life of the process.
        unsafe { &*self.fl }
    }
    /// The 3.0 function list, when the module offers one.
    pub fn f3(&self) -> Option<&CK_FUNCTION_LIST_3_0> {
        // SAFETY: as above, or null.
        unsafe { self.fl3.as_ref() }
    }
}

struct Entry {
    lib: Arc<Lib>,
    /// The process that initialized it (0: not initialized).
    pid: u32,
    refs: usize,
    /// We called its C_Initialize (and so may call C_Finalize); false when the application had initialized it.
    owned: bool,
}

static REGISTRY: PidLock<Vec<Entry>> = PidLock::new(Vec::new());

/// Calls a function of an upstream function list, or answers `CKR_FUNCTION_NOT_SUPPORTED` if it is missing. The
/// call holds a [`ForkGuard`], so the process never forks while a thread is inside the upstream module.
#[macro_export]
macro_rules! up {
    ($list:expr, $f:ident ( $($a:expr),* $(,)? )) => {{
        match $list.$f {
            Some(func) => {
                let _inside = $crate::pkcs11::lib::ForkGuard::enter_module(
                    $list as *const _ as *const ::std::ffi::c_void as usize,
                );
                // SAFETY: arguments are valid for the call; the module is loaded for the life of the process.
                unsafe { func($($a),*) }
            }
            None => ::cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED,
        }
    }};
}

/// Keeps `fork()` out of upstream calls. A child forked while another thread was inside the upstream module would
/// inherit that module's (and its crypto library's) locks held by a thread that does not exist there, and hang or
/// crash when it re-initializes the module. The `pthread_atfork` prepare handler waits — for a bounded time — until
/// no thread is inside; threads arriving meanwhile wait for the fork to finish. Atomics only: the guard itself
/// survives the fork in any state.
pub struct ForkGuard(Option<usize>);

static INSIDE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Calls in progress per upstream module (keyed by its function list's address; a few modules per process): a
/// module is re-initialized only when no thread is inside it. p11-kit-client.so, finalized under a thread that is
/// inside one of its calls, leaves that thread waiting forever on a condition variable (seen in
/// tests/tests/hsm_ha.rs when the HA prober re-initialized a member's client module under an audit read).
const MODULE_SLOTS: usize = 32;
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MODULE_KEYS: [std::sync::atomic::AtomicUsize; MODULE_SLOTS] = [ZERO; MODULE_SLOTS];
static MODULE_CALLS: [std::sync::atomic::AtomicUsize; MODULE_SLOTS] = [ZERO; MODULE_SLOTS];

/// The counter slot of a module (claimed on first use; `None` if every slot is taken: then it is not counted).
fn module_slot(key: usize, claim: bool) -> Option<usize> {
    use std::sync::atomic::Ordering::{AcqRel, Acquire};
    for (i, k) in MODULE_KEYS.iter().enumerate() {
        match k.load(Acquire) {
            v if v == key => return Some(i),
            0 if claim => match k.compare_exchange(0, key, AcqRel, Acquire) {
                Ok(_) => return Some(i),
                Err(v) if v == key => return Some(i),
                Err(_) => continue,
            },
            0 => return None,
            _ => continue,
        }
    }
    None
}

/// A module closed to new calls while it is re-initialized ([`close_module`]); reopened when dropped.
pub struct ModuleClosed(Option<usize>);

static MODULE_CLOSING: [std::sync::atomic::AtomicBool; MODULE_SLOTS] =
    [const { std::sync::atomic::AtomicBool::new(false) }; MODULE_SLOTS];

thread_local! {
    /// The modules (a bit per counter slot) this thread closed to re-initialize them: its own calls pass the gate.
    static REINITIALIZING: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Closes the module whose function list is at `key` to new calls and waits, at most `max`, until no call is
/// inside it. `None` (and the module open again) if a call is still inside after `max`. Closing first and then
/// counting (both sequentially consistent, as `enter_module` counts first and then looks at the gate) leaves no
/// moment in which a thread can slip in between the check and the re-initialization.
pub fn close_module(key: usize, max: std::time::Duration) -> Option<ModuleClosed> {
    use std::sync::atomic::Ordering::SeqCst;
    let Some(i) = module_slot(key, true) else {
        return Some(ModuleClosed(None));
    };
    MODULE_CLOSING[i].store(true, SeqCst);
    let closed = ModuleClosed(Some(i));
    let start = std::time::Instant::now();
    while MODULE_CALLS[i].load(SeqCst) > 0 {
        if start.elapsed() >= max {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    REINITIALIZING.with(|r| r.set(r.get() | 1 << i));
    Some(closed)
}

impl Drop for ModuleClosed {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            REINITIALIZING.with(|r| r.set(r.get() & !(1 << i)));
            MODULE_CLOSING[i].store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

static FORKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static ATFORK: std::sync::Once = std::sync::Once::new();

impl ForkGuard {
    /// Entering a call of the module whose function list is at `key`.
    pub fn enter_module(key: usize) -> ForkGuard {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            while FORKING.load(SeqCst) {
                std::thread::yield_now();
            }
            INSIDE.fetch_add(1, SeqCst);
            if !FORKING.load(SeqCst) {
                let slot = module_slot(key, true);
                let Some(i) = slot else {
                    return ForkGuard(None);
                };
                MODULE_CALLS[i].fetch_add(1, SeqCst);
                if !MODULE_CLOSING[i].load(SeqCst) || REINITIALIZING.with(|r| r.get() & 1 << i != 0)
                {
                    return ForkGuard(slot);
                }
                // The module is being re-initialized: wait until it is open again (no call starts meanwhile).
                MODULE_CALLS[i].fetch_sub(1, SeqCst);
                INSIDE.fetch_sub(1, SeqCst);
                while MODULE_CLOSING[i].load(SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                continue;
            }
            INSIDE.fetch_sub(1, SeqCst);
        }
    }

    /// Registers the fork handlers (once per process).
    pub fn install() {
        ATFORK.call_once(|| {
            // SAFETY: plain functions without captured state.
            unsafe {
                libc::pthread_atfork(Some(fork_prepare), Some(fork_done), Some(fork_done_child))
            };
        });
    }
}

impl Drop for ForkGuard {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            MODULE_CALLS[i].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        INSIDE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

extern "C" fn fork_prepare() {
    use std::sync::atomic::Ordering::SeqCst;
    FORKING.store(true, SeqCst);
    // An upstream call that never returns (a hung network HSM) must not stop the fork forever.
    let start = std::time::Instant::now();
    while INSIDE.load(SeqCst) > 0 && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

extern "C" fn fork_done() {
    FORKING.store(false, std::sync::atomic::Ordering::SeqCst);
}

extern "C" fn fork_done_child() {
    // Threads that were inside in the parent do not exist here.
    INSIDE.store(0, std::sync::atomic::Ordering::SeqCst);
    FORKING.store(false, std::sync::atomic::Ordering::SeqCst);
}

fn init_args(ctx: &BuildContext) -> CK_C_INITIALIZE_ARGS {
    let mut flags = CKF_OS_LOCKING_OK;
    if ctx.cant_create_threads {
        flags |= CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    }
    CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags,
        pReserved: std::ptr::null_mut(),
    }
}

/// Whether the module at `path` offers only the 2.40 interface (no 3.0 `C_GetInterface`), learnt by loading it
/// (never initializing it: this may be asked before `C_Initialize`); remembered per path. `None` if it cannot be
/// loaded.
pub fn offers_only_240(path: &Path) -> Option<bool> {
    static SEEN: parking_lot::Mutex<Vec<(std::path::PathBuf, bool)>> =
        parking_lot::Mutex::new(Vec::new());
    if let Some((_, v)) = SEEN.lock().iter().find(|(p, _)| p == path) {
        return Some(*v);
    }
    let only = load(path).ok()?.f3().is_none();
    SEEN.lock().push((path.to_path_buf(), only));
    Some(only)
}

fn load(path: &Path) -> Result<Lib> {
    // SAFETY: loading a PKCS#11 module runs its initializers; that is what the operator configured.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        Error::with(
            CKR_GENERAL_ERROR,
            format!("cannot load {}: {e}", path.display()),
        )
    })?;
    let mut fl: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: the symbol has the standard PKCS#11 signature.
    let rv = unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList\0").map_err(|e| {
                Error::with(
                    CKR_GENERAL_ERROR,
                    format!("{} has no C_GetFunctionList: {e}", path.display()),
                )
            })?;
        get(&mut fl)
    };
    if rv != CKR_OK || fl.is_null() {
        return Err(Error::with(
            CKR_GENERAL_ERROR,
            format!(
                "{}: C_GetFunctionList failed ({})",
                path.display(),
                crate::rv_name(rv)
            ),
        ));
    }
    let mut fl3: *const CK_FUNCTION_LIST_3_0 = std::ptr::null();
    // SAFETY: standard PKCS#11 3.0 signature; the interface name is a NUL-terminated static string.
    unsafe {
        type GetIf = unsafe extern "C" fn(
            *mut CK_UTF8CHAR,
            *mut CK_VERSION,
            *mut *mut CK_INTERFACE,
            CK_FLAGS,
        ) -> CK_RV;
        if let Ok(get_if) = lib.get::<GetIf>(b"C_GetInterface\0") {
            let mut iface: *mut CK_INTERFACE = std::ptr::null_mut();
            let mut v = CK_VERSION { major: 3, minor: 0 };
            if get_if(c"PKCS 11".as_ptr() as *mut _, &mut v, &mut iface, 0) == CKR_OK
                && !iface.is_null()
                && !(*iface).pFunctionList.is_null()
            {
                let l = (*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0;
                if (*l).version.major >= 3 {
                    fl3 = l;
                }
            }
        }
    }
    // Never unloaded: a module's threads or atexit handlers may outlive any finalize.
    std::mem::forget(lib);
    Ok(Lib {
        path: path.to_path_buf(),
        fl,
        fl3,
    })
}

fn initialize(e: &mut Entry, ctx: &BuildContext) -> Result<()> {
    let me = current_pid();
    let mut args = init_args(ctx);
    let f = e.lib.f();
    let mut rv = up!(f, C_Initialize(&mut args as *mut _ as *mut _));
    if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED && e.pid != 0 && e.pid != me && e.owned {
        // We initialized it in the parent and this is the child: start it afresh here.
        up!(f, C_Finalize(std::ptr::null_mut()));
        rv = up!(f, C_Initialize(&mut args as *mut _ as *mut _));
    }
    match rv {
        CKR_OK => e.owned = true,
        // The application (or another module in the process) initialized it: share, and never finalize it.
        CKR_CRYPTOKI_ALREADY_INITIALIZED => e.owned = false,
        rv => {
            return Err(Error::with(
                rv,
                format!(
                    "{}: C_Initialize failed ({})",
                    e.lib.path.display(),
                    crate::rv_name(rv)
                ),
            ))
        }
    }
    e.pid = me;
    e.refs = 1;
    Ok(())
}

/// Runs `f` (loading or initializing an upstream module) with the calling thread's OpenSSL error queue kept as it
/// was. Some modules leave errors there: SoftHSM2 2.6.1 under OpenSSL 3 asks for the "rdrand" engine in
/// `C_Initialize`, and Debian's libcrypto, having no `rdrand.so`, queues "could not load the shared library". The
/// thread is the application's: an OpenSSL application that reaches the bridge inside a TLS handshake (an nginx
/// worker's first handshake after fork re-initializes the modules) then gets `SSL_ERROR_SSL` from those stale errors
/// and drops the connection. `ERR_set_mark` / `ERR_pop_to_mark` are looked up in the process: the bridge does not
/// link OpenSSL, and when no libcrypto is loaded globally there is no application queue to protect.
fn keep_openssl_errors<T>(f: impl FnOnce() -> T) -> T {
    type ErrFn = unsafe extern "C" fn() -> std::ffi::c_int;
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names.
    let (mark, pop) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"ERR_set_mark".as_ptr()),
            libc::dlsym(libc::RTLD_DEFAULT, c"ERR_pop_to_mark".as_ptr()),
        )
    };
    if mark.is_null() || pop.is_null() {
        return f();
    }
    // SAFETY: both are OpenSSL's `int f(void)` (1.1 and 3.x); they touch only the calling thread's error queue.
    // ERR_set_mark on an empty queue sets no mark, and ERR_pop_to_mark then empties the queue: what we want.
    let (mark, pop) = unsafe {
        (
            std::mem::transmute::<*mut std::ffi::c_void, ErrFn>(mark),
            std::mem::transmute::<*mut std::ffi::c_void, ErrFn>(pop),
        )
    };
    // SAFETY: see above.
    unsafe { mark() };
    let r = f();
    // SAFETY: see above.
    unsafe { pop() };
    r
}

/// Loads (once) and initializes (once per process) the module at `path`.
pub fn acquire(path: &Path, ctx: &BuildContext) -> Result<Arc<Lib>> {
    ForkGuard::install();
    keep_openssl_errors(|| acquire_inner(path, ctx))
}

fn acquire_inner(path: &Path, ctx: &BuildContext) -> Result<Arc<Lib>> {
    let mut reg = REGISTRY.lock();
    let me = current_pid();
    if let Some(e) = reg.iter_mut().find(|e| e.lib.path == path) {
        if e.pid == me && e.refs > 0 {
            e.refs += 1;
        } else {
            initialize(e, ctx)?;
        }
        return Ok(e.lib.clone());
    }
    let lib = Arc::new(load(path)?);
    let mut e = Entry {
        lib: lib.clone(),
        pid: 0,
        refs: 0,
        owned: false,
    };
    initialize(&mut e, ctx)?;
    reg.push(e);
    Ok(lib)
}

/// Drops one reference; the last one finalizes the module if we initialized it.
pub fn release(lib: &Lib) {
    let mut reg = REGISTRY.lock();
    let me = current_pid();
    if let Some(e) = reg.iter_mut().find(|e| e.lib.path == lib.path) {
        if e.pid != me || e.refs == 0 {
            return;
        }
        e.refs -= 1;
        if e.refs == 0 {
            if e.owned {
                up!(e.lib.f(), C_Finalize(std::ptr::null_mut()));
            }
            e.pid = 0;
        }
    }
}

/// Re-initializes a module that only one backend uses (`C_Finalize` + `C_Initialize`): for a module whose connection
/// to its device died and that does not reconnect by itself (p11-kit's RPC client, many network-HSM clients).
/// Every session and login on it is gone afterwards. `Ok(false)` when the module is shared or not ours to finalize.
pub fn reinitialize(lib: &Lib, ctx: &BuildContext) -> Result<bool> {
    let mut reg = REGISTRY.lock();
    let me = current_pid();
    let Some(e) = reg.iter_mut().find(|e| e.lib.path == lib.path) else {
        return Ok(false);
    };
    if e.pid != me || e.refs != 1 || !e.owned {
        return Ok(false);
    }
    let f = e.lib.f();
    // Never finalize a module under a thread inside it: p11-kit-client.so finalized under a call leaves that thread
    // waiting forever. Calls to a dead member fail fast; one still inside after 3 s (a loaded machine) means not
    // now: the member stays down and the next probe round tries again.
    // Closed to new calls first, then waited on: a call that started between a check and the finalize would be
    // such a thread (seen: tests/tests/hsm_ha.rs hung in p11-kit-client's C_GetAttributeValue).
    let close = |key: usize| close_module(key, std::time::Duration::from_secs(3));
    let Some(_closed) = close(f as *const _ as usize) else {
        tracing::info!(module = %e.lib.path.display(), "re-initialization deferred: a call is still inside the module");
        return Ok(false);
    };
    let _closed3 = match e.lib.f3() {
        Some(f3) => match close(f3 as *const _ as usize) {
            Some(c) => Some(c),
            None => {
                tracing::info!(module = %e.lib.path.display(), "re-initialization deferred: a call is still inside the module");
                return Ok(false);
            }
        },
        None => None,
    };
    let rv = keep_openssl_errors(|| {
        up!(f, C_Finalize(std::ptr::null_mut()));
        let mut args = init_args(ctx);
        up!(f, C_Initialize(&mut args as *mut _ as *mut _))
    });
    match rv {
        CKR_OK | CKR_CRYPTOKI_ALREADY_INITIALIZED => Ok(true),
        rv => Err(Error::with(
            rv,
            format!(
                "{}: C_Initialize failed ({})",
                e.lib.path.display(),
                crate::rv_name(rv)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::keep_openssl_errors;
    use std::ffi::{c_char, c_int, c_ulong, c_void};

    /// The process's libcrypto (loaded globally, as in an OpenSSL application), or None where there is none.
    fn libcrypto() -> Option<*mut c_void> {
        // SAFETY: dlopen of a system library by name; RTLD_GLOBAL puts it in the scope RTLD_DEFAULT searches.
        let h = unsafe {
            libc::dlopen(
                c"libcrypto.so.3".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_GLOBAL,
            )
        };
        (!h.is_null()).then_some(h)
    }

    #[test]
    fn an_upstream_modules_openssl_errors_do_not_reach_the_callers_queue() {
        let Some(h) = libcrypto() else {
            eprintln!("no libcrypto.so.3 on this machine: nothing to protect");
            return;
        };
        type Clear = unsafe extern "C" fn();
        type GetError = unsafe extern "C" fn() -> c_ulong;
        type NewFile = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_void;
        // SAFETY: OpenSSL 3's signatures for these symbols.
        let (clear, get, new_file) = unsafe {
            let sym = |n: &std::ffi::CStr| {
                let p = libc::dlsym(h, n.as_ptr());
                assert!(!p.is_null(), "{n:?} not in libcrypto");
                p
            };
            (
                std::mem::transmute::<*mut c_void, Clear>(sym(c"ERR_clear_error")),
                std::mem::transmute::<*mut c_void, GetError>(sym(c"ERR_get_error")),
                std::mem::transmute::<*mut c_void, NewFile>(sym(c"BIO_new_file")),
            )
        };
        // What SoftHSM2's C_Initialize does to the queue: a failed call that queues errors (here a missing file).
        let fail = || {
            // SAFETY: NUL-terminated strings; the call fails and returns NULL.
            let bio = unsafe { new_file(c"/nonexistent/p11bridge-test".as_ptr(), c"r".as_ptr()) };
            assert!(bio.is_null());
        };
        let drain = || {
            let mut n: c_int = 0;
            // SAFETY: OpenSSL's error queue of this thread.
            while unsafe { get() } != 0 {
                n += 1;
            }
            n
        };
        // An empty queue stays empty.
        // SAFETY: this thread's queue.
        unsafe { clear() };
        keep_openssl_errors(fail);
        assert_eq!(drain(), 0, "errors of the closure were left on the queue");
        // The caller's own errors stay, and only they.
        fail();
        let mine = drain();
        assert!(mine > 0);
        fail();
        keep_openssl_errors(fail);
        assert_eq!(
            drain(),
            mine,
            "the caller's errors were not kept as they were"
        );
    }
}
