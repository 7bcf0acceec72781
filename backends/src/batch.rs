//! Group commit: concurrent operations with the same batch key (same remote key and parameters) go out as one
//! request.
//!
//! - Nothing in flight for the key: the caller sends its own item at once (no added latency for a lone caller).
//! - Something in flight: the caller queues and waits. When a request finishes, its sender makes the first waiter
//!   the next sender, who takes the queue (up to `max` items) as the next request. A queue that reaches `max` is
//!   sent at once by the caller that filled it, so one slow request does not cap throughput at `max` per round trip.
//! - Linger (`policy.linger`): the callers of the request that just ended are on their way back for their next
//!   item. Without waiting for them, callers split into two groups that alternate (8 callers: two requests of about
//!   4 per cycle instead of one of 8). So a new sender — made by the hand-off, or the first caller back after a
//!   request that carried several — waits, at most `linger`, until as many callers are queued as the key expects
//!   (the last request's plus those queued behind it); a linger that ends short lowers the expectation to what
//!   came. A caller alone (the last request carried one item) never waits.
//! - Each item gets its own result: one bad item fails only its caller.
//! - A waiter gives up at its deadline (it leaves the queue, or — if it was just made the sender — sends anyway).
//!   A panic while sending fails that request's items and still hands the queue on.
//!
//! Callers are plain threads; the sender sends on its own thread (`send` blocks, e.g. through `runtime::run`).

use crate::{Error, Result};
use cryptoki_sys::{CKR_DEVICE_ERROR, CKR_GENERAL_ERROR};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

enum State<O> {
    Waiting,
    Done(Result<O>),
    /// This waiter sends the next request (it gathers the queue behind it).
    Lead,
}

struct Waiter<I, O> {
    item: Mutex<Option<I>>,
    state: Mutex<State<O>>,
    cv: Condvar,
}

impl<I, O> Waiter<I, O> {
    fn finish(&self, s: State<O>) {
        *self.state.lock() = s;
        self.cv.notify_one();
    }
    fn take(&self) -> Option<State<O>> {
        match std::mem::replace(&mut *self.state.lock(), State::Waiting) {
            State::Waiting => None,
            s => Some(s),
        }
    }
}

struct Queue<I, O> {
    in_flight: usize,
    pending: VecDeque<Arc<Waiter<I, O>>>,
    /// How many callers the next request may expect: those of the request that ended last (on their way back for
    /// their next signature) and those that were queued behind it. 1 when callers come one at a time.
    expect: usize,
    /// When the last request ended.
    ended: Instant,
}

/// How a [`GroupCommit`] forms its requests.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Items per request at most.
    pub max: usize,
    /// How long a new sender may wait for callers expected back (those of the last request), only while fewer
    /// than them are queued. Zero: never.
    pub linger: Duration,
}

pub struct GroupCommit<I, O> {
    policy: Policy,
    queues: Mutex<HashMap<String, Queue<I, O>>>,
    /// Signalled when a caller queues (a lingering sender waits on it).
    arrivals: Condvar,
}

impl<I: Send, O: Send> GroupCommit<I, O> {
    pub fn new(policy: Policy) -> Self {
        GroupCommit {
            policy: Policy {
                max: policy.max.max(1),
                linger: policy.linger,
            },
            queues: Mutex::new(HashMap::new()),
            arrivals: Condvar::new(),
        }
    }

    /// Runs `item` alone or with others of the same `key`. `send` gets the items of one request in order and
    /// returns one result per item (`Err` for the whole request: every item gets it). `wait` bounds how long a
    /// queued caller waits for its turn and result.
    pub fn submit<F>(&self, key: &str, item: I, wait: Duration, send: F) -> Result<O>
    where
        F: Fn(Vec<I>) -> Result<Vec<Result<O>>>,
    {
        let me = Arc::new(Waiter {
            item: Mutex::new(Some(item)),
            state: Mutex::new(State::Waiting),
            cv: Condvar::new(),
        });
        let batch = {
            let mut qs = self.queues.lock();
            let q = qs.entry(key.to_string()).or_insert_with(|| Queue {
                in_flight: 0,
                pending: VecDeque::new(),
                expect: 1,
                ended: Instant::now(),
            });
            if q.in_flight == 0 {
                q.in_flight = 1;
                if q.expect > 1 && q.ended.elapsed() < self.policy.linger {
                    // Several callers were served together a moment ago: the others are on their way back.
                    self.gather(&mut qs, key, &me, true)
                } else {
                    // A lone caller sends at once.
                    vec![me.clone()]
                }
            } else if q.pending.len() + 1 >= self.policy.max {
                // A full queue: this caller sends it at once, beside the request in flight.
                q.in_flight += 1;
                self.gather(&mut qs, key, &me, false)
            } else {
                q.pending.push_back(me.clone());
                self.arrivals.notify_all();
                drop(qs);
                match self.wait(key, &me, wait) {
                    Some(State::Done(r)) => return r,
                    Some(State::Lead) => {
                        // Made the sender by the request that just ended (in_flight already counts it).
                        let mut qs = self.queues.lock();
                        self.gather(&mut qs, key, &me, true)
                    }
                    _ => {
                        return Err(Error::with(
                            CKR_DEVICE_ERROR,
                            format!("no answer within {wait:?} (queued behind a batch)"),
                        ))
                    }
                }
            }
        };
        self.lead(key, batch, &me, &send)
    }

    /// The next request's items: its sender `me` first, then up to `max - 1` of the queue, in order. With `linger`
    /// (a sender made by the hand-off, or right after a shared request) it first waits, at most `policy.linger`,
    /// while fewer callers are queued than the key's `expect` (the others are on their way back); a linger that
    /// ends short lowers `expect` to what came (callers that stopped are not waited for again).
    fn gather(
        &self,
        qs: &mut parking_lot::MutexGuard<'_, HashMap<String, Queue<I, O>>>,
        key: &str,
        me: &Arc<Waiter<I, O>>,
        linger: bool,
    ) -> Vec<Arc<Waiter<I, O>>> {
        let p = self.policy;
        if linger && !p.linger.is_zero() {
            let until = Instant::now() + p.linger;
            while let Some(q) = qs.get(key) {
                if q.pending.len() + 1 >= q.expect.min(p.max) {
                    break;
                }
                if self.arrivals.wait_until(qs, until).timed_out() {
                    if let Some(q) = qs.get_mut(key) {
                        q.expect = q.pending.len() + 1;
                    }
                    break;
                }
            }
        }
        let mut batch = vec![me.clone()];
        if let Some(q) = qs.get_mut(key) {
            let k = q.pending.len().min(p.max - 1);
            batch.extend(q.pending.drain(..k));
        }
        batch
    }

    /// Waits for a result or the lead; at the deadline leaves the queue (`None`) unless one of them came.
    fn wait(&self, key: &str, me: &Arc<Waiter<I, O>>, wait: Duration) -> Option<State<O>> {
        let deadline = Instant::now() + wait;
        {
            let mut st = me.state.lock();
            loop {
                match std::mem::replace(&mut *st, State::Waiting) {
                    State::Waiting => {}
                    s => return Some(s),
                }
                if me.cv.wait_until(&mut st, deadline).timed_out() {
                    break;
                }
            }
        }
        // Lock order: queue, then state (as the hand-off does).
        let mut qs = self.queues.lock();
        if let Some(s) = me.take() {
            return Some(s);
        }
        if let Some(q) = qs.get_mut(key) {
            q.pending.retain(|w| !Arc::ptr_eq(w, me));
        }
        None
    }

    fn lead<F>(
        &self,
        key: &str,
        batch: Vec<Arc<Waiter<I, O>>>,
        me: &Arc<Waiter<I, O>>,
        send: &F,
    ) -> Result<O>
    where
        F: Fn(Vec<I>) -> Result<Vec<Result<O>>>,
    {
        let mut waiters = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        for w in batch {
            let taken = w.item.lock().take();
            if let Some(i) = taken {
                items.push(i);
                waiters.push(w);
            }
        }
        let n = items.len();
        let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| send(items)))
            .unwrap_or_else(|_| {
                Err(Error::with(
                    CKR_GENERAL_ERROR,
                    "panic while sending a batch",
                ))
            });
        // Hand the queue on first: the next request starts while this one's results are dispatched.
        {
            let mut qs = self.queues.lock();
            if let Some(q) = qs.get_mut(key) {
                q.in_flight = q.in_flight.saturating_sub(1);
                q.expect = (n + q.pending.len()).min(self.policy.max);
                q.ended = Instant::now();
                if let Some(next) = q.pending.pop_front() {
                    // The first waiter sends the next request; it gathers the queue itself.
                    q.in_flight += 1;
                    next.finish(State::Lead);
                } else if q.in_flight == 0 && q.expect <= 1 {
                    qs.remove(key);
                }
            }
        }
        let results: Vec<Result<O>> = match results {
            Ok(v) if v.len() == n => v,
            Ok(v) => {
                let e = Error::with(
                    CKR_DEVICE_ERROR,
                    format!("batch of {n} answered with {} results", v.len()),
                );
                (0..n).map(|_| Err(e.clone())).collect()
            }
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        };
        let mut mine = None;
        for (w, r) in waiters.into_iter().zip(results) {
            if Arc::ptr_eq(&w, me) {
                mine = Some(r);
            } else {
                w.finish(State::Done(r));
            }
        }
        mine.unwrap_or_else(|| Err(Error::with(CKR_GENERAL_ERROR, "batch lost an item")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::CKR_DATA_INVALID;
    use std::sync::atomic::{AtomicUsize, Ordering};

    impl<I: Send, O: Send> GroupCommit<I, O> {
        /// Nothing queued or in flight for any key.
        fn idle(&self) -> bool {
            self.queues
                .lock()
                .values()
                .all(|q| q.in_flight == 0 && q.pending.is_empty())
        }
    }

    fn policy(max: usize) -> Policy {
        Policy {
            max,
            linger: Duration::ZERO,
        }
    }

    #[test]
    fn lone_caller_sends_alone_and_concurrent_callers_share_requests() {
        let g = Arc::new(GroupCommit::<u32, u32>::new(policy(8)));
        let requests = Arc::new(AtomicUsize::new(0));
        let biggest = Arc::new(AtomicUsize::new(0));
        let send = {
            let (requests, biggest) = (requests.clone(), biggest.clone());
            move |items: Vec<u32>| {
                requests.fetch_add(1, Ordering::SeqCst);
                biggest.fetch_max(items.len(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                // Item 13 is bad: only its caller gets the error.
                Ok(items
                    .into_iter()
                    .map(|i| {
                        if i == 13 {
                            Err(Error::new(CKR_DATA_INVALID))
                        } else {
                            Ok(i * 2)
                        }
                    })
                    .collect())
            }
        };
        assert_eq!(g.submit("k", 1, Duration::from_secs(5), &send).unwrap(), 2);
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        let hs: Vec<_> = (0..32u32)
            .map(|i| {
                let (g, send) = (g.clone(), send.clone());
                std::thread::spawn(move || g.submit("k", i, Duration::from_secs(5), &send))
            })
            .collect();
        for (i, h) in hs.into_iter().enumerate() {
            let r = h.join().unwrap();
            if i == 13 {
                assert_eq!(r.unwrap_err().rv(), CKR_DATA_INVALID);
            } else {
                assert_eq!(r.unwrap(), i as u32 * 2);
            }
        }
        let n = requests.load(Ordering::SeqCst);
        assert!(n < 32, "{n} requests for 33 items");
        assert!(biggest.load(Ordering::SeqCst) <= 8);
        assert!(g.idle());
    }

    #[test]
    fn returning_callers_are_waited_for_and_a_lone_caller_is_not() {
        // A long linger, so that the test does not depend on the machine's speed.
        let g = Arc::new(GroupCommit::<u32, u32>::new(Policy {
            max: 32,
            linger: Duration::from_millis(500),
        }));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let send = {
            let sizes = sizes.clone();
            move |items: Vec<u32>| -> Result<Vec<Result<u32>>> {
                sizes.lock().push(items.len());
                std::thread::sleep(Duration::from_millis(5));
                Ok(items.into_iter().map(Ok).collect())
            }
        };
        // One caller alone: sent at once every time (no linger: nobody else was served with it).
        let t = Instant::now();
        for i in 0..5 {
            assert_eq!(g.submit("k", i, Duration::from_secs(10), &send).unwrap(), i);
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(*sizes.lock(), vec![1; 5]);
        sizes.lock().clear();
        // Eight callers, 20 items each: after the first rounds every request carries all eight.
        let hs: Vec<_> = (0..8u32)
            .map(|t| {
                let (g, send) = (g.clone(), send.clone());
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let v = t * 100 + i;
                        assert_eq!(g.submit("k", v, Duration::from_secs(30), &send).unwrap(), v);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let sizes = sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 160);
        let full = sizes.iter().filter(|&&n| n == 8).count();
        assert!(
            full >= 15,
            "requests of 8: {full} of {}: {sizes:?}",
            sizes.len()
        );
        assert!(g.idle());
    }

    #[test]
    fn whole_request_failure_and_panics_reach_every_item_and_the_queue_moves_on() {
        let g = Arc::new(GroupCommit::<u32, u32>::new(policy(4)));
        let calls = Arc::new(AtomicUsize::new(0));
        let send = {
            let calls = calls.clone();
            move |items: Vec<u32>| -> Result<Vec<Result<u32>>> {
                let c = calls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
                match c % 3 {
                    0 => Err(Error::new(CKR_DEVICE_ERROR)),
                    1 => panic!("boom"),
                    _ => Ok(items.into_iter().map(Ok).collect()),
                }
            }
        };
        let hs: Vec<_> = (0..12u32)
            .map(|i| {
                let (g, send) = (g.clone(), send.clone());
                std::thread::spawn(move || g.submit("k", i, Duration::from_secs(5), &send))
            })
            .collect();
        for h in hs {
            match h.join().unwrap() {
                Ok(_) => {}
                Err(e) => assert!(e.rv() == CKR_DEVICE_ERROR || e.rv() == CKR_GENERAL_ERROR),
            }
        }
        assert!(g.idle());
    }

    #[test]
    fn a_queued_caller_gives_up_at_its_deadline() {
        let g = Arc::new(GroupCommit::<u32, u32>::new(policy(8)));
        let slow = |items: Vec<u32>| -> Result<Vec<Result<u32>>> {
            std::thread::sleep(Duration::from_millis(300));
            Ok(items.into_iter().map(Ok).collect())
        };
        let g2 = g.clone();
        let h = std::thread::spawn(move || g2.submit("k", 1, Duration::from_secs(5), slow));
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let r = g.submit("k", 2, Duration::from_millis(50), slow);
        assert_eq!(r.unwrap_err().rv(), CKR_DEVICE_ERROR);
        assert!(t.elapsed() < Duration::from_millis(250));
        assert_eq!(h.join().unwrap().unwrap(), 1);
        assert!(g.idle());
    }
}
