//! Where the PIN comes from: `pin-value` in the URI, `--pin`, `--pin-file`, `$P11BRIDGE_PIN`, else (for commands that
//! log in, when standard input is a terminal) a prompt without echo. Every copy is zeroized when dropped.

use crate::{Fail, R};
use cryptoki::types::AuthPin;
use std::io::IsTerminal;
use std::path::PathBuf;
use zeroize::Zeroizing;

pub struct Pins {
    /// `--pin`: visible in `ps` to every user of the machine.
    pub flag: Option<Zeroizing<String>>,
    pub file: Option<PathBuf>,
}

/// A PIN, and where it came from (for messages).
pub struct Pin {
    pub pin: AuthPin,
    pub from: &'static str,
}

fn auth(s: &str) -> AuthPin {
    // A fresh allocation of exactly the PIN (the caller's copy is zeroized by its Zeroizing wrapper).
    AuthPin::new(Box::<str>::from(s))
}

impl Pins {
    /// The PIN for `token`, or `None` when none is given and `prompt` is false or standard input is no terminal.
    /// `uri_pin`: the URI's `pin-value`, which wins.
    pub fn get(&self, token: &str, uri_pin: Option<&[u8]>, prompt: bool) -> R<Option<Pin>> {
        if let Some(p) = uri_pin {
            let p = Zeroizing::new(String::from_utf8_lossy(p).into_owned());
            return Ok(Some(Pin {
                pin: auth(&p),
                from: "the URI's pin-value",
            }));
        }
        if let Some(p) = &self.flag {
            return Ok(Some(Pin {
                pin: auth(p),
                from: "--pin",
            }));
        }
        if let Some(f) = &self.file {
            let mut bytes = Zeroizing::new(
                std::fs::read(f)
                    .map_err(|e| Fail::Msg(format!("--pin-file {}: {e}", f.display())))?,
            );
            // One trailing newline (as `echo` writes it) is not part of the PIN.
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| Fail::Msg(format!("--pin-file {}: not UTF-8 text", f.display())))?;
            if text.is_empty() {
                return Err(Fail::Msg(format!("--pin-file {}: empty", f.display())));
            }
            return Ok(Some(Pin {
                pin: auth(text),
                from: "--pin-file",
            }));
        }
        if let Some(p) = std::env::var_os("P11BRIDGE_PIN") {
            let p = Zeroizing::new(p.to_string_lossy().into_owned());
            return Ok(Some(Pin {
                pin: auth(&p),
                from: "$P11BRIDGE_PIN",
            }));
        }
        if prompt && std::io::stdin().is_terminal() {
            let p = Zeroizing::new(
                rpassword::prompt_password(format!("PIN for token \"{token}\": "))
                    .map_err(|e| Fail::Msg(format!("reading the PIN from the terminal: {e}")))?,
            );
            if p.is_empty() {
                return Err(Fail::Msg("no PIN entered".into()));
            }
            return Ok(Some(Pin {
                pin: auth(&p),
                from: "the terminal",
            }));
        }
        Ok(None)
    }
}
