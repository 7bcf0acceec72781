//! The one tokio runtime the module owns, for the remote backends.
//!
//! - Created on first use, never in `C_Initialize` (no thread, no network before a remote backend is used).
//! - Stamped with the process id: after `fork()` the parent's runtime is never touched (its worker threads do not
//!   exist in the child; dropping it would hang) — it is leaked, and the child builds its own.
//! - Callers are plain threads of the host application, maybe inside the host's own tokio runtime. A caller outside
//!   any runtime drives its future itself (`block_on` on our runtime's handle: no hop to a worker and back; our
//!   workers drive I/O and timers); a caller inside a runtime (where a nested `block_on` would panic) has the
//!   future run on our workers and waits on a channel. Either way the deadline bounds the wait.
//! - With `CKF_LIBRARY_CANT_CREATE_OS_THREADS`, a current-thread runtime is driven on the caller's thread instead.
//! - While a caller's thread drives its own call, [`may_block`] says so: a request may then be sent with the
//!   blocking client of `remote::blocking` on that thread (its own timeout bounds it, since the runtime's timer
//!   cannot interrupt blocking code). Workers never block.

use crate::{Error, Result};
use cryptoki_sys::CKR_DEVICE_ERROR;
use parking_lot::Mutex;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

enum Kind {
    Workers(tokio::runtime::Runtime),
    CallerThread(Mutex<tokio::runtime::Runtime>),
}

struct Rt {
    pid: u32,
    kind: Kind,
}

static RUNTIME: Mutex<Option<Arc<Rt>>> = Mutex::new(None);

thread_local! {
    /// Set while this thread drives a remote call itself (see [`may_block`]).
    static DRIVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the code running now may block its thread: it is a caller's own thread driving its remote call (outside
/// any tokio runtime, or on the caller-thread runtime), not one of the runtime's workers. Requests may then be
/// written and read on this thread with a blocking client (`remote::blocking`), bounded by their own timeout.
pub fn may_block() -> bool {
    DRIVING.with(|d| d.get())
}

/// `fut` within `deadline`, with [`may_block`] true while it is polled (only then: tasks it spawns, which a
/// current-thread runtime polls on this same thread between its polls, never block).
async fn driven<F: Future>(deadline: Duration, fut: F) -> Option<F::Output> {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            let was = self.0;
            DRIVING.with(|d| d.set(was));
        }
    }
    let mut fut = std::pin::pin!(tokio::time::timeout(deadline, fut));
    std::future::poll_fn(move |cx| {
        let _reset = Reset(DRIVING.with(|d| d.replace(true)));
        fut.as_mut().poll(cx)
    })
    .await
    .ok()
}

static CANT_CREATE_THREADS: OnceLock<bool> = OnceLock::new();

/// Records the application's `CKF_LIBRARY_CANT_CREATE_OS_THREADS` (first setting wins for the process).
pub fn set_cant_create_threads(v: bool) {
    let _ = CANT_CREATE_THREADS.set(v);
}

fn runtime() -> Result<Arc<Rt>> {
    let me = std::process::id();
    // A lock inherited locked through fork() would hang the child: never wait on it for long.
    let mut g = RUNTIME
        .try_lock_for(Duration::from_secs(5))
        .ok_or_else(|| Error::with(CKR_DEVICE_ERROR, "runtime lock unavailable"))?;
    if let Some(rt) = g.as_ref() {
        if rt.pid == me {
            return Ok(rt.clone());
        }
        // Inherited from the parent: leak it (never drop a runtime whose threads are gone).
        if let Some(old) = g.take() {
            std::mem::forget(old);
        }
    }
    let caller_thread = CANT_CREATE_THREADS.get().copied().unwrap_or(false);
    let kind = if caller_thread {
        Kind::CallerThread(Mutex::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::with(CKR_DEVICE_ERROR, format!("runtime: {e}")))?,
        ))
    } else {
        Kind::Workers(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("p11bridge-rt")
                .enable_all()
                .build()
                .map_err(|e| Error::with(CKR_DEVICE_ERROR, format!("runtime: {e}")))?,
        )
    };
    let rt = Arc::new(Rt { pid: me, kind });
    *g = Some(rt.clone());
    Ok(rt)
}

/// Runs `fut` to completion within `deadline`; past it, `CKR_DEVICE_ERROR` (the future is dropped).
pub fn run<F, T>(deadline: Duration, fut: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime()?;
    match &rt.kind {
        Kind::Workers(r) if tokio::runtime::Handle::try_current().is_err() => {
            // The caller's thread runs the future (saves a wakeup of a worker and one of the caller); our workers
            // keep driving I/O and timers, so the timeout fires even while the caller is parked.
            match r.block_on(driven(deadline, fut)) {
                Some(r) => r,
                None => Err(timed_out(deadline)),
            }
        }
        Kind::Workers(r) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            r.spawn(async move {
                let out = tokio::time::timeout(deadline, fut).await;
                let _ = tx.send(out);
            });
            // The runtime's timer ends the future at the deadline; the margin covers a runtime that cannot run.
            match rx.recv_timeout(deadline + Duration::from_secs(1)) {
                Ok(Ok(r)) => r,
                Ok(Err(_)) | Err(_) => Err(timed_out(deadline)),
            }
        }
        Kind::CallerThread(m) => {
            let r = m
                .try_lock_for(deadline)
                .ok_or_else(|| timed_out(deadline))?;
            match r.block_on(driven(deadline, fut)) {
                Some(r) => r,
                None => Err(timed_out(deadline)),
            }
        }
    }
}

fn timed_out(d: Duration) -> Error {
    Error::with(
        CKR_DEVICE_ERROR,
        format!("backend did not answer within {d:?}"),
    )
}

/// Runs a blocking job on the runtime's blocking pool, detached. `false` if there are no worker threads (the
/// application forbade creating them): the caller then does the job itself.
pub fn spawn_blocking(job: impl FnOnce() + Send + 'static) -> bool {
    match runtime() {
        Ok(rt) => match &rt.kind {
            Kind::Workers(r) => {
                r.spawn_blocking(job);
                true
            }
            Kind::CallerThread(_) => false,
        },
        Err(_) => false,
    }
}

/// Spawns a detached background task (health probes) on the module's runtime. `false` if there are no worker
/// threads (the application forbade creating them) or the runtime cannot be made: the caller then does without.
/// After `fork()` the task is gone with the parent's runtime; callers re-spawn lazily (stamp with the pid).
pub fn spawn_background<F>(fut: F) -> bool
where
    F: Future<Output = ()> + Send + 'static,
{
    match runtime() {
        Ok(rt) => match &rt.kind {
            Kind::Workers(r) => {
                r.spawn(fut);
                true
            }
            Kind::CallerThread(_) => false,
        },
        Err(_) => false,
    }
}

/// Whether the module may create threads (the application did not set `CKF_LIBRARY_CANT_CREATE_OS_THREADS`).
pub fn may_create_threads() -> bool {
    !CANT_CREATE_THREADS.get().copied().unwrap_or(false)
}

/// Maps `f` over `items`, in order, on the caller's thread and up to `n - 1` scoped helper threads (for blocking
/// per-item work such as reading or generating certificates). Only the caller's thread when the application
/// forbade creating threads or a thread cannot be made.
pub fn par_map<T: Send, R: Send>(items: Vec<T>, n: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let len = items.len();
    if n <= 1 || len <= 1 || !may_create_threads() {
        return items.into_iter().map(f).collect();
    }
    let queue = Mutex::new(items.into_iter().enumerate());
    let out = Mutex::new(Vec::with_capacity(len));
    let work = || loop {
        let next = queue.lock().next();
        let Some((i, t)) = next else { break };
        let r = f(t);
        out.lock().push((i, r));
    };
    std::thread::scope(|sc| {
        for _ in 1..n.min(len) {
            if std::thread::Builder::new()
                .name("p11bridge-par".into())
                .spawn_scoped(sc, work)
                .is_err()
            {
                break;
            }
        }
        work();
    });
    let mut out = out.into_inner();
    out.sort_by_key(|x| x.0);
    out.into_iter().map(|x| x.1).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn par_map_keeps_order() {
        let v: Vec<u32> = (0..100).collect();
        let out = super::par_map(v, 8, |x| {
            std::thread::sleep(std::time::Duration::from_micros(100));
            x * 3
        });
        assert_eq!(out, (0..100).map(|x| x * 3).collect::<Vec<u32>>());
    }
}
