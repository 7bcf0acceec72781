//! A small HTTP `CONNECT` proxy on a free loopback port (std threads, in the test's own process): it opens tunnels
//! and counts them per target (`host:port`), can require `Proxy-Authorization: Basic`, refuse every `CONNECT` with
//! a status of the test's choice, or hang (accept the TCP connection and never answer; tunnels already open stop
//! carrying data). It records every `Proxy-Authorization` value it was sent, so a test can check what the client
//! sent. Stopped (its listener closed) when dropped; tunnels end with their connections.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with a `CONNECT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Opens the tunnel (when the credentials, if required, are right).
    Pass,
    /// Answers this status and reason (e.g. `403, "Forbidden"`) and closes.
    Refuse(u16, String),
    /// Reads the request and never answers; open tunnels stop carrying data.
    Hang,
}

#[derive(Default)]
struct State {
    mode: Mutex<Option<Mode>>,
    /// The expected `Proxy-Authorization` value (`Basic ...`), if any.
    auth: Mutex<Option<String>>,
    attempts: Mutex<HashMap<String, u64>>,
    tunnels: Mutex<HashMap<String, u64>>,
    sent_auth: Mutex<Vec<String>>,
    /// Connections kept open without an answer (hang mode).
    held: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl State {
    fn mode(&self) -> Mode {
        self.mode.lock().unwrap().clone().unwrap_or(Mode::Pass)
    }
}

pub struct ConnectProxy {
    pub port: u16,
    state: Arc<State>,
}

impl ConnectProxy {
    /// A proxy on a free loopback port, in [`Mode::Pass`], without authentication.
    pub fn start() -> ConnectProxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(c, &st));
            }
        });
        ConnectProxy { port, state }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT`
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Requires `Proxy-Authorization: Basic base64(user:password)` (else 407).
    pub fn require_auth(&self, user: &str, password: &str) {
        *self.state.auth.lock().unwrap() = Some(format!(
            "Basic {}",
            base64(format!("{user}:{password}").as_bytes())
        ));
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = Some(mode);
    }

    /// Tunnels opened to `target` (`host:port`).
    pub fn tunnels(&self, target: &str) -> u64 {
        *self.state.tunnels.lock().unwrap().get(target).unwrap_or(&0)
    }

    /// Tunnels opened, to any target.
    pub fn all_tunnels(&self) -> u64 {
        self.state.tunnels.lock().unwrap().values().sum()
    }

    /// `CONNECT` requests received for `target`, whatever the answer.
    pub fn attempts(&self, target: &str) -> u64 {
        *self
            .state
            .attempts
            .lock()
            .unwrap()
            .get(target)
            .unwrap_or(&0)
    }

    /// `CONNECT` requests received, to any target.
    pub fn all_attempts(&self) -> u64 {
        self.state.attempts.lock().unwrap().values().sum()
    }

    /// Every `Proxy-Authorization` value received.
    pub fn sent_auth(&self) -> Vec<String> {
        self.state.sent_auth.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for c in self.state.held.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// The request head, read a byte at a time up to the blank line (nothing of the tunnel is read).
fn read_head(c: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut b).ok()? == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.push(b[0]);
    }
    String::from_utf8(head).ok()
}

fn answer(c: &mut TcpStream, status: u16, reason: &str, extra: &str) {
    let _ = write!(
        c,
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = c.flush();
}

fn serve(mut c: TcpStream, st: &Arc<State>) {
    let Some(head) = read_head(&mut c) else {
        return;
    };
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "CONNECT" {
        answer(&mut c, 501, "Not Implemented", "");
        return;
    }
    let target = target.to_string();
    *st.attempts
        .lock()
        .unwrap()
        .entry(target.clone())
        .or_default() += 1;
    let auth = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("proxy-authorization")
            .then(|| v.trim().to_string())
    });
    if let Some(a) = &auth {
        st.sent_auth.lock().unwrap().push(a.clone());
    }
    match st.mode() {
        Mode::Hang => {
            if let Ok(k) = c.try_clone() {
                st.held.lock().unwrap().push(k);
            }
            return;
        }
        Mode::Refuse(status, reason) => {
            answer(&mut c, status, &reason, "");
            return;
        }
        Mode::Pass => {}
    }
    let required = st.auth.lock().unwrap().clone();
    if let Some(want) = required {
        if auth.as_deref() != Some(want.as_str()) {
            answer(
                &mut c,
                407,
                "Proxy Authentication Required",
                "Proxy-Authenticate: Basic realm=\"p11bridge-test\"\r\n",
            );
            return;
        }
    }
    let Ok(up) = TcpStream::connect(&target) else {
        answer(&mut c, 502, "Bad Gateway", "");
        return;
    };
    let _ = c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    *st.tunnels
        .lock()
        .unwrap()
        .entry(target.clone())
        .or_default() += 1;
    let (Ok(c2), Ok(up2)) = (c.try_clone(), up.try_clone()) else {
        return;
    };
    let st2 = st.clone();
    std::thread::spawn(move || relay(c2, up2, &st2));
    relay(up, c, st);
}

/// Copies `from` → `to` until either ends; in hang mode it holds what it read (the tunnel goes silent).
fn relay(mut from: TcpStream, mut to: TcpStream, st: &Arc<State>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while st.mode() == Mode::Hang && !st.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_standard() {
        assert_eq!(super::base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(super::base64(b"a"), "YQ==");
        assert_eq!(super::base64(b"ab"), "YWI=");
    }
}
