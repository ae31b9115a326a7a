//! The passphrase of a protected passport (`passport.pem` as encrypted PKCS#8, PBES2 with
//! scrypt: `engine::crypto::RsaPrivate::to_protected_pem`): where it comes from, asked only
//! when a protected passport is opened or a passport is protected.
//!
//! Two sources, never an environment variable or a flag's value (either shows in process
//! listings and shell histories): a file whose first line is the passphrase
//! (`--passphrase-file`, for scripts; warned about when group or others may read it), or
//! the terminal, echo off, only when stdin is one. The passphrase lives in zeroized memory
//! and is never printed, logged or put in an error: errors name the file, not its text.
//!
//! What does not live here: the encryption (`engine::crypto`), the passport files
//! (`super::Passport`).

use anyhow::{Context, bail};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Longest passphrase file read, in bytes (a passphrase is a line, not a document).
pub const PASSPHRASE_FILE_BYTES_MAX: u64 = 4096;

/// A passphrase did not open a protected passport. The CLI answers it with exit code 1 (a
/// refused check), not 2: the passport and the file were found, the secret was wrong.
#[derive(Debug, thiserror::Error)]
#[error("the passphrase does not open {}; check the passphrase (file); the passport is unchanged", path.display())]
pub struct WrongPassphrase {
    pub path: PathBuf,
}

/// Where a passphrase comes from, when one is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassphraseSource {
    /// The first line of this file (`--passphrase-file`).
    File(PathBuf),
    /// Asked on the terminal, echo off (stdin is a terminal).
    Terminal,
    /// Neither: a protected passport cannot be opened, a new one is saved unprotected.
    Unavailable,
}

impl PassphraseSource {
    /// `--passphrase-file` when given, else the terminal when stdin is one, else none.
    pub fn from_args(file: Option<PathBuf>) -> Self {
        match file {
            Some(file) => Self::File(file),
            None if std::io::stdin().is_terminal() => Self::Terminal,
            None => Self::Unavailable,
        }
    }

    /// The passphrase that opens `protected` (a passport file), or why there is none.
    pub fn to_open(&self, protected: &Path) -> anyhow::Result<Zeroizing<String>> {
        match self {
            Self::File(file) => read_file(file),
            Self::Terminal => prompt(&format!("passphrase of {}: ", protected.display())),
            Self::Unavailable => bail!("{} is protected by a passphrase; give --passphrase-file FILE (or run on a terminal to be asked)", protected.display()),
        }
    }

    /// A new passphrase for `what` (asked twice on a terminal); `None` when there is no
    /// source, or when the terminal's answer is empty (the caller keeps the key unprotected).
    pub fn to_protect(&self, what: &str) -> anyhow::Result<Option<Zeroizing<String>>> {
        match self {
            Self::File(file) => read_file(file).map(Some),
            Self::Terminal => {
                let first = prompt(&format!("new passphrase for {what} (empty: leave it unprotected): "))?;
                if first.is_empty() {
                    return Ok(None);
                }
                let second = prompt("the same passphrase again: ")?;
                if *first != *second {
                    bail!("the two passphrases differ; nothing was written");
                }
                Ok(Some(first))
            }
            Self::Unavailable => Ok(None),
        }
    }
}

/// The first line of `file` (without its line ending), never empty. The error names the
/// file, never its contents.
pub fn read_file(file: &Path) -> anyhow::Result<Zeroizing<String>> {
    let metadata = std::fs::metadata(file).with_context(|| format!("cannot read the passphrase file {}", file.display()))?;
    if metadata.len() > PASSPHRASE_FILE_BYTES_MAX {
        bail!("the passphrase file {} is over {PASSPHRASE_FILE_BYTES_MAX} bytes; it must hold one line", file.display());
    }
    crate::common::keys::warn_if_loose(file);
    let text = Zeroizing::new(std::fs::read(file).with_context(|| format!("cannot read the passphrase file {}", file.display()))?);
    let line = text.split(|byte| *byte == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else { bail!("the passphrase file {} is not UTF-8", file.display()) };
    if line.is_empty() {
        bail!("the passphrase file {} is empty; its first line is the passphrase", file.display());
    }
    Ok(Zeroizing::new(line.to_string()))
}

fn prompt(question: &str) -> anyhow::Result<Zeroizing<String>> {
    rpassword::prompt_password(question).map(Zeroizing::new).context("cannot read a passphrase from the terminal; give --passphrase-file FILE instead")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passphrase_file_gives_its_first_line_and_errors_never_quote_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pp");
        std::fs::write(&file, "s3cret words\r\nignored\n").expect("write");
        assert_eq!(*read_file(&file).expect("reads"), "s3cret words");
        std::fs::write(&file, "\nsecond-line-is-not-the-passphrase\n").expect("write");
        let empty = read_file(&file).expect_err("an empty first line");
        assert!(!format!("{empty:#}").contains("second-line"), "{empty:#}");
        std::fs::write(&file, vec![b'x'; 5000]).expect("write");
        assert!(read_file(&file).is_err(), "bounded");
        assert!(read_file(&dir.path().join("missing")).is_err());
        let unavailable = PassphraseSource::Unavailable.to_open(Path::new("passport.pem")).expect_err("no source");
        assert!(format!("{unavailable:#}").contains("--passphrase-file"), "{unavailable:#}");
        assert_eq!(PassphraseSource::Unavailable.to_protect("x").expect("no source"), None);
    }
}
