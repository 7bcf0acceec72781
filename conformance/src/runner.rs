//! Runs the spec matrix's sections against one module, each in a child process (this executable re-run with
//! `--child`), so that a module which calls `exit()` or crashes on a row costs only that row: the section is run
//! again with the fatal row skipped (reported as `DIED (...)`).

use crate::cases::{self, Checks, Row, Target, CALL_MARK, ROW_MARK};
use crate::module;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often a section is re-run after a row killed the process.
const MAX_ATTEMPTS: usize = 200;
const SKIP_ENV: &str = "P11C_SKIP";
/// A section that runs longer than this is killed (its pending row reported as hung).
const SECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// The child side: `--child MODULE_PATH bridge|softhsm SECTION_INDEX`. Prints the rows and exits.
pub fn child_main(args: &[String]) -> ! {
    let (path, kind, idx) = (&args[0], &args[1], args[2].parse::<usize>().expect("index"));
    cases::set_target(match kind.as_str() {
        "bridge" => cases::bridge_target(),
        _ => cases::softhsm_target(),
    });
    module::load(Path::new(path));
    let skip = std::env::var(SKIP_ENV).unwrap_or_default();
    let mut c = Checks::child(
        skip.split('\n')
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    );
    cases::run_section(&mut c, idx);
    // Do not run the module's destructors (some abort when still initialized after a failed section).
    unsafe { libc::_exit(0) }
}

/// Runs every section of the matrix against `module_path` as `kind` ("bridge" or "softhsm").
pub fn run_column(module_path: &Path, kind: &str) -> Vec<Row> {
    let mut all = vec![];
    for (i, (name, _, _)) in cases::SECTIONS.iter().enumerate() {
        all.extend(run_section(module_path, kind, i, name));
    }
    all
}

fn run_section(module_path: &Path, kind: &str, i: usize, name: &str) -> Vec<Row> {
    let mut skip: Vec<String> = vec![];
    let mut died: HashMap<String, String> = HashMap::new();
    for _attempt in 0..MAX_ATTEMPTS {
        let (status, out) = spawn(module_path, kind, i, &skip);
        let mut rows = vec![];
        let mut pending: Option<String> = None;
        for line in out.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() >= 2 && f[0] == CALL_MARK {
                pending = Some(f[1].to_string());
            } else if f.len() >= 5 && f[0] == ROW_MARK {
                if pending.as_deref() == Some(f[1]) {
                    pending = None;
                }
                let mut got = f[3].to_string();
                if let Some(how) = died.get(f[1]) {
                    got = format!("DIED ({how})");
                }
                rows.push(Row {
                    id: f[1].to_string(),
                    spec: f[2].to_string(),
                    got,
                    pass: f[4] == "1",
                });
            }
        }
        match status {
            Ok(()) => return rows,
            Err(how) => match pending {
                Some(id) if !skip.contains(&id) => {
                    died.insert(id.clone(), how);
                    skip.push(id);
                }
                _ => {
                    let last = rows.last().map(|r| r.id.clone()).unwrap_or_default();
                    rows.push(Row {
                        id: format!("{name} / process died after '{last}'"),
                        spec: "check".into(),
                        got: format!("DIED ({how})"),
                        pass: false,
                    });
                    return rows;
                }
            },
        }
    }
    vec![Row {
        id: format!("{name} / section"),
        spec: "check".into(),
        got: "DIED more than MAX_ATTEMPTS times".into(),
        pass: false,
    }]
}

/// Runs one section in a child process: Ok, or how it ended otherwise; and its stdout.
fn spawn(
    module_path: &Path,
    kind: &str,
    i: usize,
    skip: &[String],
) -> (Result<(), String>, String) {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .arg("--child")
        .arg(module_path)
        .arg(kind)
        .arg(i.to_string())
        .env(SKIP_ENV, skip.join("\n"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a section");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Ok(st);
        }
        if start.elapsed() > SECTION_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break Err(format!("hung > {} s", SECTION_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = reader.join().unwrap_or_default();
    let status = match status {
        Ok(st) if st.success() => Ok(()),
        Ok(st) => Err(describe(st)),
        Err(e) => Err(e),
    };
    (status, out)
}

fn describe(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => st.to_string(),
    }
}

/// A target's description for the child.
pub fn kind_of(t: &Target) -> &'static str {
    if t.is_bridge {
        "bridge"
    } else {
        "softhsm"
    }
}
