//! Group commit: concurrent operations with the same batch key (same remote key and parameters) go out as one
//! request.
//!
//! - Nothing in flight for the key: the caller sends its own item at once (no added latency for a lone caller).
//! - Something in flight: the caller queues and waits. When a request finishes, its sender hands the queue (up to
//!   `max` items) to the first waiter, who sends it as the next request. A queue that reaches `max` is sent at once
//!   by the caller that filled it, so one slow request does not cap throughput at `max` per round trip.
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

enum State<I, O> {
    Waiting,
    Done(Result<O>),
    /// This waiter sends the given batch (it is the first of them).
    Lead(Vec<Arc<Waiter<I, O>>>),
}

struct Waiter<I, O> {
    item: Mutex<Option<I>>,
    state: Mutex<State<I, O>>,
    cv: Condvar,
}

impl<I, O> Waiter<I, O> {
    fn finish(&self, s: State<I, O>) {
        *self.state.lock() = s;
        self.cv.notify_one();
    }
    fn take(&self) -> Option<State<I, O>> {
        match std::mem::replace(&mut *self.state.lock(), State::Waiting) {
            State::Waiting => None,
            s => Some(s),
        }
    }
}

struct Queue<I, O> {
    in_flight: usize,
    pending: VecDeque<Arc<Waiter<I, O>>>,
}

pub struct GroupCommit<I, O> {
    max: usize,
    queues: Mutex<HashMap<String, Queue<I, O>>>,
}

impl<I: Send, O: Send> GroupCommit<I, O> {
    pub fn new(max: usize) -> Self {
        GroupCommit {
            max: max.max(1),
            queues: Mutex::new(HashMap::new()),
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
            });
            if q.in_flight == 0 {
                q.in_flight = 1;
                vec![me.clone()]
            } else {
                q.pending.push_back(me.clone());
                if q.pending.len() >= self.max {
                    q.in_flight += 1;
                    q.pending.drain(..self.max).collect()
                } else {
                    drop(qs);
                    match self.wait(key, &me, wait) {
                        Some(State::Done(r)) => return r,
                        Some(State::Lead(b)) => b,
                        _ => {
                            return Err(Error::with(
                                CKR_DEVICE_ERROR,
                                format!("no answer within {wait:?} (queued behind a batch)"),
                            ))
                        }
                    }
                }
            }
        };
        self.lead(key, batch, &me, &send)
    }

    /// Waits for a result or the lead; at the deadline leaves the queue (`None`) unless one of them came.
    fn wait(&self, key: &str, me: &Arc<Waiter<I, O>>, wait: Duration) -> Option<State<I, O>> {
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
                if !q.pending.is_empty() {
                    let k = q.pending.len().min(self.max);
                    let next: Vec<_> = q.pending.drain(..k).collect();
                    q.in_flight += 1;
                    next[0].finish(State::Lead(next.clone()));
                } else if q.in_flight == 0 {
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

    #[test]
    fn lone_caller_sends_alone_and_concurrent_callers_share_requests() {
        let g = Arc::new(GroupCommit::<u32, u32>::new(8));
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
        assert!(g.queues.lock().is_empty());
    }

    #[test]
    fn whole_request_failure_and_panics_reach_every_item_and_the_queue_moves_on() {
        let g = Arc::new(GroupCommit::<u32, u32>::new(4));
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
        assert!(g.queues.lock().is_empty());
    }

    #[test]
    fn a_queued_caller_gives_up_at_its_deadline() {
        let g = Arc::new(GroupCommit::<u32, u32>::new(8));
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
        assert!(g.queues.lock().is_empty());
    }
}
