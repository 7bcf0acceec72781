//! A TCP fault-injection proxy (std threads, no protocol knowledge: it works for any backend that speaks TCP —
//! OpenBao/Vault over HTTP today, AWS KMS/moto later). It forwards `listen` → `upstream` and applies the current
//! [`Mode`], which can be switched at run time with [`Proxy::set`] (in-process) or through a control file (see
//! [`Proxy::watch_file`] and the `faultproxy` binary). The mode is looked at on every accepted connection *and* on
//! every chunk forwarded, so connections a client keeps alive across a switch get the fault too.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward unchanged.
    Pass,
    /// Hold every chunk this many milliseconds before forwarding it.
    Delay(u64),
    /// Close connections at once (new ones on accept; existing ones on their next chunk): a FIN.
    Drop,
    /// Reset connections (SO_LINGER 0, then close): an RST.
    Reset,
    /// Accept and read, never forward nor answer.
    Blackhole,
    /// Forward one byte every this many milliseconds.
    SlowDrip(u64),
    /// Forward requests, but reset the connection when the upstream's reply arrives, for the next N replies (then
    /// back to `Pass`): the server did the work, the client never hears of it. Shows which calls a client retries
    /// (an idempotent Sign: the server counts it twice) and which it must not (a CreateKey: counted once).
    ResetReply(u64),
}

impl Mode {
    /// `pass`, `delay MS`, `drop`, `reset`, `blackhole`, `slow-drip MS`.
    pub fn parse(s: &str) -> Option<Mode> {
        let mut w = s.split_whitespace();
        let name = w.next()?;
        let n = w.next().and_then(|v| v.parse::<u64>().ok());
        Some(match name {
            "pass" | "off" => Mode::Pass,
            "delay" => Mode::Delay(n.unwrap_or(1000)),
            "drop" => Mode::Drop,
            "reset" => Mode::Reset,
            "blackhole" => Mode::Blackhole,
            "slow-drip" => Mode::SlowDrip(n.unwrap_or(100)),
            "reset-reply" => Mode::ResetReply(n.unwrap_or(1)),
            _ => return None,
        })
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Pass => write!(f, "pass"),
            Mode::Delay(ms) => write!(f, "delay {ms}"),
            Mode::Drop => write!(f, "drop"),
            Mode::Reset => write!(f, "reset"),
            Mode::Blackhole => write!(f, "blackhole"),
            Mode::SlowDrip(ms) => write!(f, "slow-drip {ms}"),
            Mode::ResetReply(n) => write!(f, "reset-reply {n}"),
        }
    }
}

struct State {
    mode: Mutex<Mode>,
    /// `ResetReply` applies only to replies to requests containing these bytes (e.g. `TrentService.CreateKey`).
    reply_filter: Mutex<Option<Vec<u8>>>,
    stop: AtomicBool,
    connections: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    st: Arc<State>,
}

/// How often blocked reads wake up to look at the mode.
const POLL: Duration = Duration::from_millis(50);

impl Proxy {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and forwards to `upstream`.
    pub fn start(listen: &str, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let l = TcpListener::bind(listen)?;
        let addr = l.local_addr()?;
        let st = Arc::new(State {
            mode: Mutex::new(Mode::Pass),
            reply_filter: Mutex::new(None),
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
        });
        let st2 = st.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if st2.stop.load(SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                st2.connections.fetch_add(1, SeqCst);
                let st3 = st2.clone();
                std::thread::spawn(move || connection(st3, c, upstream));
            }
        });
        Ok(Proxy { addr, st })
    }

    pub fn set(&self, m: Mode) {
        *self.st.mode.lock().unwrap() = m;
    }

    /// Limits [`Mode::ResetReply`] to the replies to requests that contain `needle` (None: every reply).
    pub fn set_reply_filter(&self, needle: Option<&str>) {
        *self.st.reply_filter.lock().unwrap() = needle.map(|n| n.as_bytes().to_vec());
    }

    pub fn mode(&self) -> Mode {
        *self.st.mode.lock().unwrap()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.st.connections.load(SeqCst)
    }

    /// Follows a control file: whenever its content (a [`Mode::parse`] string) changes, the mode changes.
    pub fn watch_file(&self, path: PathBuf) {
        let st = self.st.clone();
        std::thread::spawn(move || {
            let mut last = String::new();
            while !st.stop.load(SeqCst) {
                if let Ok(s) = std::fs::read_to_string(&path) {
                    let s = s.trim().to_string();
                    if s != last {
                        if let Some(m) = Mode::parse(&s) {
                            *st.mode.lock().unwrap() = m;
                            eprintln!("faultproxy: mode {m}");
                        }
                        last = s;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.st.stop.store(true, SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

fn reset(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized linger structure.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

fn blackhole(st: &State, mut c: TcpStream) {
    let _ = c.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 4096];
    while !st.stop.load(SeqCst) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn connection(st: Arc<State>, client: TcpStream, upstream: SocketAddr) {
    let mode = *st.mode.lock().unwrap();
    match mode {
        Mode::Drop => {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        Mode::Reset => return reset(&client),
        Mode::Blackhole => return blackhole(&st, client),
        _ => {}
    }
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        return reset(&client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    let st2 = st.clone();
    // Set when a request on this connection matched the reply filter.
    let matched = Arc::new(AtomicBool::new(false));
    let m2 = matched.clone();
    let up = std::thread::spawn(move || pump(&st2, c2, s2, false, &m2));
    pump(&st, server, client, true, &matched);
    let _ = up.join();
}

/// Forwards `from` → `to` under the current mode until either side ends; `reply`: this is upstream → client.
fn pump(st: &State, mut from: TcpStream, mut to: TcpStream, reply: bool, matched: &AtomicBool) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 16384];
    let mut holed = false;
    loop {
        if st.stop.load(SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if !reply {
            if let Some(needle) = &*st.reply_filter.lock().unwrap() {
                let hit = buf[..n]
                    .windows(needle.len().max(1))
                    .any(|w| w == needle.as_slice());
                matched.store(hit, SeqCst);
            }
        }
        // A connection that was blackholed stays so (its stream lost data).
        let mode = if holed {
            Mode::Blackhole
        } else {
            *st.mode.lock().unwrap()
        };
        let ok = match mode {
            Mode::ResetReply(_)
                if reply && (st.reply_filter.lock().unwrap().is_none() || matched.load(SeqCst)) =>
            {
                // Take one from the budget (another connection may have taken the last one meanwhile).
                let mut m = st.mode.lock().unwrap();
                if let Mode::ResetReply(k) = *m {
                    *m = if k > 1 {
                        Mode::ResetReply(k - 1)
                    } else {
                        Mode::Pass
                    };
                    drop(m);
                    reset(&from);
                    reset(&to);
                    return;
                }
                drop(m);
                to.write_all(&buf[..n]).is_ok()
            }
            Mode::Pass | Mode::ResetReply(_) => to.write_all(&buf[..n]).is_ok(),
            Mode::Delay(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                to.write_all(&buf[..n]).is_ok()
            }
            Mode::SlowDrip(ms) => {
                let mut ok = true;
                for b in &buf[..n] {
                    if to.write_all(std::slice::from_ref(b)).is_err() {
                        ok = false;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(ms));
                }
                ok
            }
            Mode::Blackhole => {
                holed = true;
                true
            }
            Mode::Drop => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            Mode::Reset => {
                reset(&from);
                reset(&to);
                return;
            }
        };
        if !ok {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
