//! `p11bridge`: the operator's command line, going through the same `libp11bridge.so` every consumer loads.
//!
//! - `check`: the module's own check of every backend (`C_P11BRIDGE_Check`), per slot, in configuration order.
//! - `list`: every object of every token with its RFC 7512 URI (a table, `--tsv` or `--json`).
//! - `sign` / `verify`: for scripts and smoke checks, by URI (ECDSA as DER by default, as openssl wants it).
//! - `keygen`, `export`, `cert import`: a key's life from the command line.
//! - `install-p11kit`: writes the p11-kit module file.
//!
//! Errors are one line: `p11bridge: COMMAND: CKR_NAME: short sentence. Cause: the module's words`
//! (`C_P11BRIDGE_GetLastError`). Output to a closed pipe ends the program quietly: writes to stdout map `EPIPE` to a
//! quiet exit (SIGPIPE stays ignored, as Rust sets it, so that the module's own sockets get `EPIPE` rather than a
//! signal that would kill the process in the middle of a backend call).

mod asn1;
mod commands;
mod module;
mod pin;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// A failure: a message for stderr, or stdout closed by the reader (a quiet end).
pub enum Fail {
    Msg(String),
    Pipe,
}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Fail::Msg(s)
    }
}

impl From<&str> for Fail {
    fn from(s: &str) -> Self {
        Fail::Msg(s.to_string())
    }
}

pub type R<T> = Result<T, Fail>;

/// Writes to stdout; a closed pipe becomes [`Fail::Pipe`] (never a panic).
pub fn out(s: &str) -> R<()> {
    std::io::stdout()
        .lock()
        .write_all(s.as_bytes())
        .map_err(stdout_error)
}

pub fn out_bytes(b: &[u8]) -> R<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(b).and_then(|_| o.flush()).map_err(stdout_error)
}

fn stdout_error(e: std::io::Error) -> Fail {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Fail::Pipe
    } else {
        Fail::Msg(format!("standard output: {e}"))
    }
}

#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => { $crate::out(&format!("{}\n", format_args!($($t)*))) };
}

/// A warning on stderr (a failed write to stderr is ignored: nowhere left to say it).
pub fn warn(text: &str) {
    let _ = writeln!(std::io::stderr(), "p11bridge: warning: {text}");
}

const MAIN_HELP: &str = "\
The module: --module, else $P11BRIDGE_MODULE, else libp11bridge.so beside this
program, else /usr/lib/<multiarch>/pkcs11/libp11bridge.so, else
/usr/local/lib/p11bridge/libp11bridge.so.

The configuration, as the module finds it: --config (sets $P11BRIDGE_CONFIG),
else $P11BRIDGE_CONFIG, else $XDG_CONFIG_HOME/p11bridge/p11bridge.toml (or
~/.config/p11bridge/p11bridge.toml), else /etc/p11bridge/p11bridge.toml.

The PIN: pin-value in the URI, else --pin, else --pin-file, else
$P11BRIDGE_PIN, else a prompt without echo when standard input is a terminal
(only commands that log in ask: sign, keygen, cert import, HMAC verify).

Errors: one line on stderr, COMMAND: CKR_NAME: what it means. Cause: the
module's account; exit status 1.";

const LIST_HELP: &str = "\
Columns:
  TOKEN    the token's label: a unified token, or a mirror slot's upstream token
  CLASS    private, public, secret-key, cert, data
  TYPE     key type and size, one word: rsa-2048, ec-p256, ec-p384, ec-p521,
           ec-secp256k1, ed25519, aes-256, generic-secret-256, chacha20-256;
           x509 for a certificate; - when none applies
  BACKEND  the backend holding the object (CKA_P11BRIDGE_BACKEND), as named in
           the configuration
  USAGES   what a key may do, one letter each: s sign, v verify, e encrypt,
           d decrypt, w wrap, u unwrap; - none
  LABEL    CKA_LABEL
  ID       CKA_ID in hex (the table shortens a long one with …)
  URI      the RFC 7512 URI naming the object, for --uri

Rows come token by token in slot order; within a unified token, backend by
backend in the order of the slot's `backends` in the configuration.

Without a PIN only public objects are shown: private keys need --pin,
--pin-file or $P11BRIDGE_PIN (list never prompts). The PIN applies to the
unified tokens, or to the --token one.

The table is for people. --tsv writes the same columns separated by single
tabs, with a header line and nothing shortened, for scripts (cut -f,
awk -F'\\t'); --json writes one object per row.";

const CHECK_HELP: &str = "\
Runs the module's own check (C_P11BRIDGE_Check): for every slot, in
configuration order, each backend is logged in with its configured credentials
(no PIN is asked), its objects are listed and the keys the configuration names
are looked up; each slot's PIN references are read. Printed per backend: the
endpoint, the login result, the objects and keys found, the configured keys
found and missing, the latency, and every problem in the backend's words.

Exit status: 0 when everything passed; 1 when anything failed (the last line,
on stderr, says how many) or the configuration is invalid (its file and line
are named). --json prints the module's report for monitoring (docs/check.md).";

/// The signature mechanisms `sign` and `verify` accept.
const MECHANISMS: &[(&str, &str)] = &[
    (
        "ECDSA",
        "ECDSA over a digest you give (-i holds the SHA-256/384/512 digest)",
    ),
    ("ECDSA-SHA256", "ECDSA; the message is hashed with SHA-256"),
    ("ECDSA-SHA384", "ECDSA; the message is hashed with SHA-384"),
    ("ECDSA-SHA512", "ECDSA; the message is hashed with SHA-512"),
    ("RSA-PKCS", "RSA PKCS#1 v1.5 over a DER DigestInfo you give"),
    ("SHA256-RSA-PKCS", "RSA PKCS#1 v1.5 with SHA-256"),
    ("SHA384-RSA-PKCS", "RSA PKCS#1 v1.5 with SHA-384"),
    ("SHA512-RSA-PKCS", "RSA PKCS#1 v1.5 with SHA-512"),
    (
        "SHA256-RSA-PKCS-PSS",
        "RSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt",
    ),
    (
        "SHA384-RSA-PKCS-PSS",
        "RSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt",
    ),
    (
        "SHA512-RSA-PKCS-PSS",
        "RSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt",
    ),
    ("EDDSA", "Ed25519 (pure) over the message"),
    ("SHA256-HMAC", "HMAC-SHA-256 with a secret key"),
    ("SHA384-HMAC", "HMAC-SHA-384 with a secret key"),
    ("SHA512-HMAC", "HMAC-SHA-512 with a secret key"),
];

fn mechanisms() -> PossibleValuesParser {
    PossibleValuesParser::new(
        MECHANISMS
            .iter()
            .map(|(n, h)| PossibleValue::new(*n).help(*h)),
    )
}

#[derive(Parser)]
#[command(
    name = "p11bridge",
    version,
    about = "Inspect and use p11bridge's unified PKCS#11 token",
    after_help = MAIN_HELP
)]
struct Cli {
    /// The PKCS#11 module to load (default: $P11BRIDGE_MODULE, else libp11bridge.so beside this program, else
    /// /usr/lib/<multiarch>/pkcs11/libp11bridge.so, else /usr/local/lib/p11bridge/libp11bridge.so).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    module: Option<PathBuf>,
    /// The configuration file; sets $P11BRIDGE_CONFIG for the module (default: as the module finds it:
    /// $P11BRIDGE_CONFIG, $XDG_CONFIG_HOME/p11bridge/p11bridge.toml or ~/.config/…, /etc/p11bridge/p11bridge.toml).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    config: Option<PathBuf>,
    /// The token's user PIN. Visible to every user of the machine in `ps`: prefer --pin-file, $P11BRIDGE_PIN or the
    /// prompt.
    #[arg(
        long,
        global = true,
        value_name = "PIN",
        help_heading = "Global options"
    )]
    pin: Option<String>,
    /// A file holding the user PIN (one trailing newline is ignored).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pin_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SigFormat {
    /// ECDSA as a DER SEQUENCE { r, s } (what openssl, X.509 and most tools use)
    Der,
    /// ECDSA as PKCS#11's r‖s (two big-endian integers of the field size)
    Raw,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyKind {
    /// RSA 2048-bit key pair
    Rsa2048,
    /// RSA 3072-bit key pair
    Rsa3072,
    /// RSA 4096-bit key pair
    Rsa4096,
    /// ECDSA key pair on NIST P-256
    P256,
    /// ECDSA key pair on NIST P-384
    P384,
    /// ECDSA key pair on NIST P-521
    P521,
    /// Ed25519 key pair
    Ed25519,
    /// AES-128 secret key
    Aes128,
    /// AES-256 secret key
    Aes256,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the configuration and check every backend of every slot (no PIN needed).
    #[command(after_help = CHECK_HELP)]
    Check {
        /// Print the module's report as JSON (for monitoring) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List every object of every token, with its URI.
    #[command(after_help = LIST_HELP)]
    List {
        /// One JSON object per row (token, class, type, key_type, bits, curve, backend, usages, label, id, uri).
        #[arg(long, conflicts_with = "tsv")]
        json: bool,
        /// Tab-separated columns with a header line, nothing shortened (for scripts).
        #[arg(long)]
        tsv: bool,
        /// Only this token (by label); the PIN then applies to it.
        #[arg(long, value_name = "LABEL")]
        token: Option<String>,
    },
    /// Sign a file with the private (or secret) key a URI names; writes the signature.
    Sign {
        /// The key, as `p11bridge list` shows it (pkcs11:token=…;object=…;id=…;type=private).
        #[arg(long)]
        uri: String,
        /// The signature mechanism.
        #[arg(long, short, value_parser = mechanisms(), ignore_case = true)]
        mechanism: String,
        /// The data to sign (- for standard input): the message, or the digest for ECDSA and RSA-PKCS.
        #[arg(long, short, value_name = "FILE")]
        input: PathBuf,
        /// Where to write the signature (- for standard output).
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
        /// How an ECDSA signature is written (other signatures have one form).
        #[arg(long, value_enum, default_value = "der")]
        format: SigFormat,
    },
    /// Verify a signature with the public key (or secret key) a URI names.
    Verify {
        /// The key: a public key (type=public) or, for HMAC, the secret key (type=secret-key; needs the PIN).
        #[arg(long)]
        uri: String,
        /// The signature mechanism.
        #[arg(long, short, value_parser = mechanisms(), ignore_case = true)]
        mechanism: String,
        /// The data that was signed (- for standard input).
        #[arg(long, short, value_name = "FILE")]
        input: PathBuf,
        /// The signature; an ECDSA signature may be DER or raw r‖s.
        #[arg(long, short, value_name = "FILE")]
        signature: PathBuf,
    },
    /// Create a key in one backend; prints the new key's URI.
    Keygen {
        /// The backend to create it in, as named in the configuration ([backend.NAME]).
        #[arg(long, value_name = "NAME")]
        backend: String,
        /// What to create.
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        kind: KeyKind,
        /// The key's label (CKA_LABEL; in Vault and KMS also the key's name / alias).
        #[arg(long)]
        label: String,
        /// The key's CKA_ID in hex (default: 16 random bytes; Vault and KMS choose their own).
        #[arg(long, value_name = "HEX")]
        id: Option<String>,
        /// The unified token to create it in (default: the one whose backends include --backend).
        #[arg(long, value_name = "LABEL")]
        token: Option<String>,
    },
    /// Write a public key (SubjectPublicKeyInfo PEM) or a certificate (PEM) a URI names.
    Export {
        /// The public key (type=public, or the private key's URI: its public key is written) or the certificate
        /// (type=cert).
        #[arg(long)]
        uri: String,
        /// Where to write the PEM (default: standard output).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Certificates of keys.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
    /// Write the p11-kit module file (default /etc/pkcs11/modules/p11bridge.module).
    InstallP11kit {
        /// Where to write it.
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/pkcs11/modules/p11bridge.module"
        )]
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Attach a certificate (e.g. issued by a CA for the key) to a key: a certificate object in the key's backend,
    /// with the key's CKA_ID.
    Import {
        /// The key the certificate is for (its private key URI, as `p11bridge list` shows it).
        #[arg(long)]
        uri: String,
        /// The certificate, PEM or DER; it must certify this key's public key.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The certificate object's label (default: the key's label).
        #[arg(long)]
        label: Option<String>,
    },
}

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Cmd::Check { .. } => "check",
            Cmd::List { .. } => "list",
            Cmd::Sign { .. } => "sign",
            Cmd::Verify { .. } => "verify",
            Cmd::Keygen { .. } => "keygen",
            Cmd::Export { .. } => "export",
            Cmd::Cert { .. } => "cert import",
            Cmd::InstallP11kit { .. } => "install-p11kit",
        }
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // The CLI says every cause itself (C_P11BRIDGE_GetLastError): the module's own stderr notices would repeat them.
    if std::env::var_os("P11BRIDGE_QUIET").is_none() {
        std::env::set_var("P11BRIDGE_QUIET", "1");
    }
    if let Some(c) = &cli.config {
        std::env::set_var("P11BRIDGE_CONFIG", c);
    }
    let pins = pin::Pins {
        flag: cli.pin.take().map(zeroize::Zeroizing::new),
        file: cli.pin_file.take(),
    };
    let name = cli.cmd.name();
    let r = commands::run(&cli.module, cli.cmd, &pins)
        .and_then(|()| std::io::stdout().lock().flush().map_err(stdout_error));
    match r {
        Ok(()) | Err(Fail::Pipe) => ExitCode::SUCCESS,
        Err(Fail::Msg(m)) => {
            let _ = writeln!(std::io::stderr(), "p11bridge: {name}: {m}");
            ExitCode::FAILURE
        }
    }
}
