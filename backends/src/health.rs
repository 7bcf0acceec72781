//! Endpoint health for the HA features: one circuit breaker per endpoint (a Vault node, a KMS region, an upstream
//! HSM token), shared by every backend that has more than one place to send a call.
//!
//! A breaker is *closed* (calls go through) until `threshold` consecutive failures; it then *opens* for `cooldown`:
//! calls skip the endpoint without touching it, so a dead endpoint costs one timeout, not one per call. When the
//! cooldown has passed, exactly one caller (or a background prober) is let through as a probe (*half-open*): its
//! success closes the breaker, its failure opens it for another cooldown.
//!
//! Only failures that say the endpoint is unwell count (connection errors, timeouts, 5xx, device errors) — the
//! backend decides; a wrong signature or a missing key is the caller's problem, not the endpoint's.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else skips the endpoint until it reports.
    HalfOpen {
        since: Instant,
    },
}

/// The circuit breaker of one endpoint.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

/// What [`Breaker::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// The endpoint is healthy: use it.
    Yes,
    /// The endpoint is open and due for a probe: this caller is the probe (report its outcome).
    Probe,
    /// Skip the endpoint.
    No,
}

impl Breaker {
    /// A breaker that opens after `threshold` consecutive failures (at least 1) for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Whether a call may use the endpoint now.
    pub fn admit(&self) -> Admit {
        let now = Instant::now();
        let mut s = self.state.lock();
        match *s {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen { since: now };
                Admit::Probe
            }
            // A probe that never reported (its caller vanished) does not block the endpoint for ever.
            State::HalfOpen { since } if now.duration_since(since) >= self.cooldown * 4 => {
                *s = State::HalfOpen { since: now };
                Admit::Probe
            }
            _ => Admit::No,
        }
    }

    /// Whether the endpoint is believed healthy (closed), without changing anything.
    pub fn is_closed(&self) -> bool {
        matches!(*self.state.lock(), State::Closed { .. })
    }

    /// Whether a probe is due (open with its cooldown passed), without changing anything.
    pub fn probe_due(&self) -> bool {
        match *self.state.lock() {
            State::Open { until } => Instant::now() >= until,
            State::HalfOpen { since } => since.elapsed() >= self.cooldown * 4,
            State::Closed { .. } => false,
        }
    }

    /// The call (or probe) succeeded: the endpoint is healthy.
    pub fn success(&self) {
        *self.state.lock() = State::Closed { failures: 0 };
    }

    /// The call (or probe) failed in a way that says the endpoint is unwell. Returns `true` if this opened the
    /// breaker.
    pub fn failure(&self) -> bool {
        let mut s = self.state.lock();
        match *s {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *s = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            _ => {
                *s = State::Open {
                    until: Instant::now() + self.cooldown,
                };
                true
            }
        }
    }
}

/// The breakers of one backend's endpoints (in preference order) and the pid stamp of its background prober.
///
/// Routing: a call uses the endpoints believed healthy, in order. With a background prober (worker threads), that
/// means *closed* breakers only: an open endpoint is probed by the prober, never on a caller's time. Without one
/// (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`), a caller whose turn comes to an endpoint due for a probe is the probe
/// ([`Breaker::admit`]). When no endpoint is usable, every one is tried in order (last resort): an outage of all of
/// them costs what it cost without breakers, and the first to answer closes its breaker.
#[derive(Debug)]
pub struct Endpoints {
    pub breakers: Vec<Breaker>,
    /// `(pid, running)`: whether this process has a prober (`None`: not tried yet).
    prober: Mutex<Option<(u32, bool)>>,
}

impl Endpoints {
    pub fn new(n: usize, threshold: u32, cooldown: Duration) -> Self {
        Endpoints {
            breakers: (0..n).map(|_| Breaker::new(threshold, cooldown)).collect(),
            prober: Mutex::new(None),
        }
    }

    /// The endpoints (indexes among `among`, kept in that order) a call should try; never empty if `among` is not.
    pub fn route(&self, among: &[usize], background: bool) -> Vec<usize> {
        let usable: Vec<usize> = among
            .iter()
            .copied()
            .filter(|&i| {
                self.breakers
                    .get(i)
                    .is_some_and(|b| b.is_closed() || (!background && b.probe_due()))
            })
            .collect();
        if usable.is_empty() {
            among.to_vec()
        } else {
            usable
        }
    }

    /// Called when a call's turn comes to endpoint `i`: whether to use it. Closed → yes. Without a prober, an open
    /// endpoint due for a probe admits this caller as the probe. `last_resort`: the route had no usable endpoint,
    /// every one is tried.
    pub fn enter(&self, i: usize, background: bool, last_resort: bool) -> bool {
        let Some(b) = self.breakers.get(i) else {
            return false;
        };
        if last_resort || b.is_closed() {
            return true;
        }
        !background && b.admit() != Admit::No
    }

    /// Whether every endpoint in `among` is unusable (the route is the last resort).
    pub fn all_down(&self, among: &[usize], background: bool) -> bool {
        !among.iter().any(|&i| {
            self.breakers
                .get(i)
                .is_some_and(|b| b.is_closed() || (!background && b.probe_due()))
        })
    }

    /// Makes sure this process has a background prober: `start` spawns one and says whether it could (no worker
    /// threads → `false`). Tried once per process (after `fork()` the parent's prober is gone: a new one is
    /// started in the child). Returns whether a prober runs.
    pub fn ensure_prober(&self, start: impl FnOnce() -> bool) -> bool {
        let me = std::process::id();
        // A lock inherited locked through fork() must not hang the child.
        let Some(mut g) = self.prober.try_lock_for(Duration::from_secs(1)) else {
            return false;
        };
        match *g {
            Some((pid, running)) if pid == me => running,
            _ => {
                let running = start();
                *g = Some((me, running));
                running
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once() {
        let b = Breaker::new(2, Duration::from_millis(30));
        assert_eq!(b.admit(), Admit::Yes);
        assert!(!b.failure());
        assert_eq!(b.admit(), Admit::Yes);
        assert!(b.failure());
        assert_eq!(b.admit(), Admit::No);
        assert!(!b.probe_due());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.probe_due());
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No, "only one probe at a time");
        b.failure();
        assert_eq!(b.admit(), Admit::No);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admit::Probe);
        b.success();
        assert!(b.is_closed());
        assert_eq!(b.admit(), Admit::Yes);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = Breaker::new(3, Duration::from_secs(60));
        b.failure();
        b.failure();
        b.success();
        b.failure();
        b.failure();
        assert!(b.is_closed());
        assert!(b.failure());
        assert!(!b.is_closed());
    }

    #[test]
    fn routes_around_open_endpoints() {
        let e = Endpoints::new(2, 1, Duration::from_millis(30));
        assert_eq!(e.route(&[0, 1], true), vec![0, 1]);
        e.breakers[0].failure();
        assert_eq!(e.route(&[0, 1], true), vec![1]);
        assert!(!e.enter(0, true, false));
        e.breakers[1].failure();
        assert!(e.all_down(&[0, 1], true));
        assert_eq!(
            e.route(&[0, 1], true),
            vec![0, 1],
            "last resort: all, in order"
        );
        assert!(e.enter(0, true, true));
        std::thread::sleep(Duration::from_millis(40));
        // Without a prober, a caller probes the endpoint that is due.
        assert_eq!(e.route(&[0, 1], false), vec![0, 1]);
        assert!(e.enter(0, false, false));
        assert!(!e.enter(0, false, false), "one probe at a time");
        e.breakers[0].success();
        assert_eq!(e.route(&[0, 1], true), vec![0]);
        let mut n = 0;
        assert!(e.ensure_prober(|| {
            n += 1;
            true
        }));
        assert!(e.ensure_prober(|| unreachable!()));
        assert_eq!(n, 1);
    }
}
