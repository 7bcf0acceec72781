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
use std::future::Future;
use std::sync::{Arc, Weak};
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
    prober: ProberStamp,
}

/// Whether this process has a background prober, stamped with the pid (after `fork()` the parent's prober is gone).
#[derive(Debug, Default)]
pub struct ProberStamp {
    /// `(pid, state)`; `None`: never tried.
    state: Mutex<Option<(u32, Prober)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prober {
    Running,
    /// It ended (nothing left to probe): the next [`ProberStamp::ensure`] starts another.
    Ended,
    /// It could not be started (no worker threads): not tried again in this process.
    Unavailable,
}

impl ProberStamp {
    /// Makes sure this process has a background prober: `start` spawns one and says whether it could. A prober
    /// that could not be started is not tried again in this process (after `fork()` it is tried in the child);
    /// one that ended is started again. Returns whether a prober runs.
    pub fn ensure(&self, start: impl FnOnce() -> bool) -> bool {
        let me = std::process::id();
        // A lock inherited locked through fork() must not hang the child.
        let Some(mut g) = self.state.try_lock_for(Duration::from_secs(1)) else {
            return false;
        };
        match *g {
            Some((pid, Prober::Running)) if pid == me => true,
            Some((pid, Prober::Unavailable)) if pid == me => false,
            _ => {
                let running = start();
                *g = Some((
                    me,
                    if running {
                        Prober::Running
                    } else {
                        Prober::Unavailable
                    },
                ));
                running
            }
        }
    }

    /// Whether a prober was started and has not ended (by this process or the one it was forked from).
    pub fn is_running(&self) -> bool {
        matches!(*self.state.lock(), Some((_, Prober::Running)))
    }

    /// The prober of this process ends when `done` says so (checked under the stamp's lock, so that a prober
    /// started meanwhile is not lost). Returns whether it ended (or is not this process's prober any more).
    pub fn end_if(&self, done: impl FnOnce() -> bool) -> bool {
        let mut g = self.state.lock();
        match *g {
            Some((pid, Prober::Running)) if pid == std::process::id() => {
                if done() {
                    *g = Some((pid, Prober::Ended));
                    true
                } else {
                    false
                }
            }
            _ => true,
        }
    }
}

/// One endpoint a call may use, in a [`Walk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turn {
    /// The endpoint's index.
    pub index: usize,
    /// How many endpoints of the route are left, this one included.
    pub remaining: usize,
}

impl Turn {
    /// An equal share of the time `left` for this endpoint and each one after it (the last gets all of it).
    pub fn share(&self, left: Duration) -> Duration {
        left / self.remaining.max(1) as u32
    }
}

/// The walk of one call over its route, in failover order (see [`Endpoints`]): yields each endpoint the call may
/// enter now, skipping those whose breaker is open (unless the route is the last resort).
pub struct Walk<'a> {
    health: &'a Endpoints,
    route: Vec<usize>,
    next: usize,
    background: bool,
    last_resort: bool,
}

impl Iterator for Walk<'_> {
    type Item = Turn;

    fn next(&mut self) -> Option<Turn> {
        while let Some(&index) = self.route.get(self.next) {
            let remaining = self.route.len() - self.next;
            self.next += 1;
            if self.health.enter(index, self.background, self.last_resort) {
                return Some(Turn { index, remaining });
            }
        }
        None
    }
}

impl Walk<'_> {
    /// How many endpoints the route has (those skipped included).
    pub fn route_len(&self) -> usize {
        self.route.len()
    }
}

impl Endpoints {
    pub fn new(n: usize, threshold: u32, cooldown: Duration) -> Self {
        Endpoints {
            breakers: (0..n).map(|_| Breaker::new(threshold, cooldown)).collect(),
            prober: ProberStamp::default(),
        }
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.breakers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
    }

    /// Whether every endpoint is believed healthy.
    pub fn all_closed(&self) -> bool {
        self.breakers.iter().all(Breaker::is_closed)
    }

    /// The endpoints (indexes among `among`, kept in that order) a call should try; never empty if `among` is not.
    pub fn route(&self, among: &[usize], background: bool) -> Vec<usize> {
        let usable: Vec<usize> = among
            .iter()
            .copied()
            .filter(|&i| self.usable(i, background))
            .collect();
        if usable.is_empty() {
            among.to_vec()
        } else {
            usable
        }
    }

    /// The walk of one call over `among` (in that order): see [`Walk`].
    pub fn walk(&self, among: &[usize], background: bool) -> Walk<'_> {
        Walk {
            health: self,
            last_resort: self.all_down(among, background),
            route: self.route(among, background),
            next: 0,
            background,
        }
    }

    /// Whether endpoint `i` is believed healthy, or (without a prober) due for a probe a caller may make.
    fn usable(&self, i: usize, background: bool) -> bool {
        self.breakers
            .get(i)
            .is_some_and(|b| b.is_closed() || (!background && b.probe_due()))
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

    /// For a caller that walks its endpoints in two passes, probing on its own thread (HA groups of upstream
    /// tokens): whether endpoint `i` may be used now. Closed → yes. Open → skipped in the first pass when a
    /// `background` prober runs; in the `last_resort` pass, or without a prober, one due for a probe is probed now
    /// by `probe` (which reports the outcome), and its answer decides.
    pub fn usable_now(
        &self,
        i: usize,
        background: bool,
        last_resort: bool,
        probe: impl FnOnce() -> bool,
    ) -> bool {
        let Some(b) = self.breakers.get(i) else {
            return false;
        };
        if b.is_closed() {
            return true;
        }
        if !last_resort && background {
            return false;
        }
        match b.admit() {
            Admit::Yes => true,
            Admit::Probe => probe(),
            Admit::No => false,
        }
    }

    /// The walk of a caller that probes on its own thread (HA groups of upstream tokens): the endpoints of `order`
    /// that `keep` allows and that are usable now ([`Endpoints::usable_now`], `probe` probing one in place) in a
    /// first pass, then in a last-resort pass. Lazy: an endpoint is admitted (and perhaps probed) only when the
    /// walk reaches it.
    pub fn walk_in_passes<'a, K, P>(
        &'a self,
        order: Vec<usize>,
        background: bool,
        keep: K,
        probe: P,
    ) -> impl Iterator<Item = usize> + 'a
    where
        K: Fn(usize) -> bool + Clone + 'a,
        P: Fn(usize) -> bool + Clone + 'a,
    {
        [false, true].into_iter().flat_map(move |last_resort| {
            let (keep, probe) = (keep.clone(), probe.clone());
            order.clone().into_iter().filter(move |&i| {
                keep(i) && self.usable_now(i, background, last_resort, || probe(i))
            })
        })
    }

    /// Whether every endpoint in `among` is unusable (the route is the last resort).
    pub fn all_down(&self, among: &[usize], background: bool) -> bool {
        !among.iter().any(|&i| self.usable(i, background))
    }

    /// Endpoint `i` answered: its breaker closes. Returns whether it was not closed before (healthy again).
    pub fn answered(&self, i: usize) -> bool {
        let Some(b) = self.breakers.get(i) else {
            return false;
        };
        let was_unwell = !b.is_closed();
        b.success();
        was_unwell
    }

    /// Endpoint `i` failed in a way that says it is unwell. Returns whether this opened its breaker.
    pub fn unwell(&self, i: usize) -> bool {
        self.breakers.get(i).is_some_and(Breaker::failure)
    }

    /// For the background prober: whether endpoint `i` is due for a probe, and if so admits the prober as the
    /// probe (its breaker half-open until [`Endpoints::probed`] reports).
    pub fn take_probe(&self, i: usize) -> bool {
        self.breakers
            .get(i)
            .is_some_and(|b| b.probe_due() && b.admit() == Admit::Probe)
    }

    /// The outcome of a probe of endpoint `i`: an answer closes its breaker, a failure opens it again.
    pub fn probed(&self, i: usize, answered: bool) {
        if let Some(b) = self.breakers.get(i) {
            if answered {
                b.success();
            } else {
                b.failure();
            }
        }
    }

    /// One round of a background prober: each endpoint due for a probe is probed (`probe` says whether it
    /// answered; `report` is told the outcome) until `stop` says the prober must end.
    pub fn probe_round(
        &self,
        stop: impl Fn() -> bool,
        mut probe: impl FnMut(usize) -> bool,
        mut report: impl FnMut(usize, bool),
    ) {
        for i in 0..self.len() {
            if stop() {
                break;
            }
            if self.take_probe(i) {
                let ok = probe(i);
                self.probed(i, ok);
                report(i, ok);
            }
        }
    }

    /// Makes sure this process has a background prober (see [`ProberStamp::ensure`]). Returns whether one runs.
    pub fn ensure_prober(&self, start: impl FnOnce() -> bool) -> bool {
        self.prober.ensure(start)
    }

    /// The prober's stamp (a prober that ends by itself marks it there).
    pub fn prober(&self) -> &ProberStamp {
        &self.prober
    }
}

/// A backend whose endpoints a background task probes on the module's runtime (KMS regions, Vault nodes).
pub trait Probed: Send + Sync + 'static {
    fn endpoints(&self) -> &Endpoints;
    /// How long the prober sleeps between rounds.
    fn probe_interval(&self) -> Duration;
    /// Whether a round can run now (else it is skipped without touching any breaker).
    fn ready(&self) -> bool {
        true
    }
    /// Checks endpoint `i` (its breaker half-open): whether it answered.
    fn probe(self: Arc<Self>, i: usize) -> impl Future<Output = bool> + Send;
    /// Says the outcome of a probe (logs).
    fn report(&self, i: usize, answered: bool);
}

/// The background prober of a backend with several endpoints: every `probe_interval`, each endpoint whose breaker
/// is due for a probe is probed; an answer closes its breaker, so calls return to it. Ends when the backend is
/// gone (`C_Finalize`).
pub async fn probe_loop<S: Probed>(w: Weak<S>) {
    loop {
        let Some(interval) = w.upgrade().map(|s| s.probe_interval()) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(s) = w.upgrade() else {
            return;
        };
        if !s.ready() {
            continue;
        }
        let health = s.endpoints();
        for i in 0..health.len() {
            if !health.take_probe(i) {
                continue;
            }
            let ok = s.clone().probe(i).await;
            health.probed(i, ok);
            s.report(i, ok);
        }
    }
}

/// Starts the background prober of `s` in this process if it has several endpoints. `true` if one runs (callers
/// then never probe an open endpoint themselves).
pub fn background<S: Probed>(s: &Arc<S>) -> bool {
    if s.endpoints().len() < 2 {
        return false;
    }
    let w = Arc::downgrade(s);
    s.endpoints()
        .ensure_prober(move || crate::runtime::spawn_background(probe_loop(w)))
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
