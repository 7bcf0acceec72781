//! Starting the harness's servers: each on a loopback port, killed (SIGKILL) when this process exits however it
//! exits, and, when asked, when its handle is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How a server is started.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// The port to listen on; 0: a free one.
    pub port: u16,
    /// Where the server's stderr goes (none: discarded).
    pub log: Option<PathBuf>,
    /// Kill the server when its handle is dropped (else it lives until this process exits; the caller may still
    /// kill it by its pid).
    pub stop_on_drop: bool,
}

/// A free loopback port (free when asked: the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// A free port whose successor is free too (an OpenBao dev server also listens on port + 1 for clustering).
pub fn free_port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// Starts `cmd` (stderr per `launch.log`) and returns its pid and, with `ready_line`, the first line it prints
/// on stdout (waiting at most 60 s for it). The child is spawned and reaped by a thread that lives as long as the
/// process: `PR_SET_PDEATHSIG` fires when the thread that spawned the child exits, which is then the end of the
/// process.
pub fn spawn_server(mut cmd: Command, launch: &Launch, ready_line: bool) -> (i32, String) {
    let what = format!("{:?}", cmd.get_program());
    let stderr = launch
        .log
        .as_ref()
        .and_then(|path| std::fs::File::create(path).ok())
        .map_or_else(Stdio::null, Stdio::from);
    cmd.stdout(if ready_line {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(stderr);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: only an async-signal-safe call between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let _ = tx.send(Ok((child.id() as i32, line)));
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => panic!("start {what}: {e}"),
        Err(_) => panic!("{what} did not start within 60 s"),
    }
}

/// One plain HTTP/1.0 request to a server's side channel at `host_port` (directly, not through any proxy); insists
/// on 200 and returns the body.
pub fn http(host_port: &str, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(host_port).expect("connect to the side channel");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write to the side channel");
    let mut r = String::new();
    s.read_to_string(&mut r)
        .expect("read from the side channel");
    let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
    assert!(head.contains(" 200 "), "{method} {path}: {head}");
    body.to_string()
}

/// A server started by [`spawn_server`]: its pid, and the signals the tests send it. Killed when dropped if its
/// [`Launch::stop_on_drop`] said so. `Moto` and `Bao` dereference to theirs (`moto.kill()`, `bao.pid`).
pub struct Process {
    pub pid: i32,
    stop_on_drop: bool,
}

impl Process {
    pub fn new(pid: i32, launch: &Launch) -> Process {
        Process {
            pid,
            stop_on_drop: launch.stop_on_drop,
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) has no memory effects; the pid is our child's (once it has exited and been reaped, the
        // number could in principle be reused, as with any kill by pid).
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Kills the server (SIGKILL): connections are refused from now on.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Freezes the server (SIGSTOP): requests hang, as with a server unreachable behind a black hole or a dead node
    /// behind a load balancer.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.stop_on_drop {
            self.kill();
        }
    }
}
