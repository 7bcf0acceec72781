//! Timing: a round of calls on several threads at once, and what it measured.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Default, Clone)]
pub struct Stats {
    pub ops: usize,
    pub wall: Duration,
    pub lat: Vec<Duration>,
}

impl Stats {
    pub fn add(&mut self, o: Stats) {
        self.ops += o.ops;
        self.wall += o.wall;
        self.lat.extend(o.lat);
    }
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn pct(&mut self, p: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        self.lat.sort();
        self.lat[((self.lat.len() - 1) as f64 * p) as usize]
    }
}

/// Runs `iters` calls of `work` on each of `threads` threads (each with its own state from `setup`).
pub fn round<S: Send + 'static>(
    threads: usize,
    iters: usize,
    setup: Arc<dyn Fn(usize) -> S + Send + Sync>,
    work: Arc<dyn Fn(&mut S) + Send + Sync>,
) -> Stats {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut hs = Vec::new();
    for t in 0..threads {
        let (b, setup, work) = (barrier.clone(), setup.clone(), work.clone());
        hs.push(std::thread::spawn(move || {
            let mut st = setup(t);
            b.wait();
            let mut lat = Vec::with_capacity(iters);
            let start = Instant::now();
            for _ in 0..iters {
                let t0 = Instant::now();
                work(&mut st);
                lat.push(t0.elapsed());
            }
            (start, Instant::now(), lat)
        }));
    }
    barrier.wait();
    let mut lat = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for h in hs {
        let (s, e, l) = h.join().expect("worker");
        first = Some(first.map_or(s, |f| f.min(s)));
        last = Some(last.map_or(e, |x| x.max(e)));
        lat.extend(l);
    }
    // From the first thread's start to the last one's end (not the main thread's view: it may be descheduled).
    let wall = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => Duration::ZERO,
    };
    Stats {
        ops: threads * iters,
        wall,
        lat,
    }
}
