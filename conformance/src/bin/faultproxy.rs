//! `faultproxy LISTEN UPSTREAM [--control FILE] [--mode MODE]`: the fault-injection proxy as a process, for any
//! TCP backend (OpenBao, Vault, moto/KMS). Prints `listening on ADDR`; the mode is switched by writing one of
//! `pass`, `delay MS`, `drop`, `reset`, `blackhole`, `slow-drip MS` into the control file.

use p11bridge_conformance::proxy::{Mode, Proxy};
use std::net::ToSocketAddrs;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: faultproxy LISTEN UPSTREAM [--control FILE] [--mode MODE]");
        std::process::exit(2);
    }
    let upstream = args[1]
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("bad upstream address {}", args[1]));
    let p = Proxy::start(&args[0], upstream).expect("listen");
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if let Some(m) = opt("--mode") {
        p.set(Mode::parse(&m).expect("bad --mode"));
    }
    if let Some(f) = opt("--control") {
        p.watch_file(f.into());
    }
    println!("listening on {}", p.addr);
    loop {
        std::thread::park();
    }
}
