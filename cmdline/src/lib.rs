//! Command-line and config-file handling shared by the workspace's binaries
//! (`fabricd`, `fabric-ctl`, `fabric-perf`, `fabric-bench`): a bad argument,
//! a bad config file or a bad key in one is reported in one line that names
//! it, and `--help` / `--version` print as clap prints them; and the signals
//! that stop a daemon ([`signal`]).

pub mod signal;

use std::fmt::Display;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use serde::de::DeserializeOwned;

/// Largest config file read (a config is a few hundred bytes; this stops a
/// mistaken path such as `/dev/zero` from filling memory).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Parse the process's arguments into `T`. On a bad argument, print one
/// line naming it (prefixed with `program`) and give exit code 2; on
/// `--help` or `--version`, print them and give exit code 0.
pub fn parse<T: Parser>(program: &str) -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!("{program}: a subcommand is needed (see {program} --help)");
            ExitCode::from(2)
        }
        _ if e.use_stderr() => {
            eprintln!("{program}: {}", one_line_error(&e.to_string()));
            ExitCode::from(2)
        }
        _ => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
    })
}

/// A clap error as one line: its first paragraph (the message and any
/// argument names listed under it), without the usage that follows.
pub fn one_line_error(message: &str) -> String {
    let text = message.trim_start().trim_start_matches("error: ");
    text.lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A config file that cannot be used, and why (one line).
#[derive(Debug, thiserror::Error)]
#[error("config {}: {reason}", path.display())]
pub struct ConfigFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it; for a bad value, its line and text.
    pub reason: String,
}

/// Read and parse a TOML config file. Refused: a path that is not a
/// regular file (a FIFO would block for ever), a file larger than
/// [`MAX_CONFIG_BYTES`], text that is not UTF-8 or not valid for `T`.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = read_config_text(path)?;
    toml::from_str(&text).map_err(|e| ConfigFileError {
        path: path.to_path_buf(),
        reason: toml_error(&text, e.span(), e.message()),
    })
}

fn read_config_text(path: &Path) -> Result<String, ConfigFileError> {
    let fail = |what: &dyn Display| ConfigFileError {
        path: path.to_path_buf(),
        reason: what.to_string(),
    };
    let unreadable = |e: std::io::Error| fail(&format_args!("cannot read it: {e}"));
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(fail(&"not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(fail(&format_args!(
            "larger than {} KiB",
            MAX_CONFIG_BYTES >> 10
        )));
    }
    String::from_utf8(bytes).map_err(|_| fail(&"not UTF-8 text"))
}

/// Most characters of a bad line quoted in an error.
const MAX_QUOTED_CHARS: usize = 80;

/// A TOML error as "line N (`text`): message", or just the message when it
/// has no place in the text (a missing key, say).
fn toml_error(text: &str, span: Option<std::ops::Range<usize>>, message: &str) -> String {
    let message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let Some((before, after)) =
        span.and_then(|s| Some((text.get(..s.start)?, text.get(s.start..)?)))
    else {
        return message;
    };
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = before.len() + after.find('\n').unwrap_or(after.len());
    let number = before.matches('\n').count() + 1;
    let line = text[line_start..line_end].trim();
    // A line of a few hundred kilobytes is not repeated whole.
    let line = match line.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    };
    if line.is_empty() {
        format!("line {number}: {message}")
    } else {
        format!("line {number} (`{line}`): {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_paragraph_joined() {
        let m = "error: the following required arguments were not provided:\n  --address <A>\n\nUsage: x\n";
        assert_eq!(
            one_line_error(m),
            "the following required arguments were not provided: --address <A>"
        );
        assert_eq!(
            one_line_error("error: invalid value 'x' for '--iodepth'\n\nFor more"),
            "invalid value 'x' for '--iodepth'"
        );
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        size: Option<u32>,
        name: Option<String>,
    }

    fn write(text: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn error_of(text: &[u8]) -> String {
        let f = write(text);
        let e = read_toml::<Conf>(f.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("config {}: {}", f.path().display(), e.reason)
        );
        assert!(!e.reason.contains('\n'), "{e}");
        e.reason
    }

    #[test]
    fn config_errors_name_the_line() {
        assert_eq!(
            error_of(b"name = \"a\"\nsize = \"4096\"\n"),
            "line 2 (`size = \"4096\"`): invalid type: string \"4096\", expected u32"
        );
        assert!(error_of(b"name = \"a").starts_with("line 1 (`name = \"a`): "));
        assert!(error_of(b"colour = 1").contains("unknown field `colour`"));
        assert!(error_of(b"size = 1\nsize = 2\n").starts_with("line 2 "));
        assert!(error_of(b"\xff\xfe").ends_with("not UTF-8 text"));
        let big = vec![b'#'; MAX_CONFIG_BYTES as usize + 1];
        assert!(error_of(&big).ends_with("larger than 1024 KiB"));
        let long = format!("name = {}", "x".repeat(1000));
        let e = error_of(long.as_bytes());
        assert!(e.starts_with("line 1 (`name = xxx") && e.len() < 200, "{e}");
        assert_eq!(toml_error("a", Some(7..9), "m"), "m");
    }

    #[test]
    fn config_file_read() {
        let f = write(b"size = 7\n");
        let c: Conf = read_toml(f.path()).unwrap();
        assert_eq!(c.size, Some(7));
        let dir = tempfile::tempdir().unwrap();
        let e = read_toml::<Conf>(dir.path()).unwrap_err();
        assert_eq!(e.reason, "not a regular file");
        let e = read_toml::<Conf>(&dir.path().join("none")).unwrap_err();
        assert!(e.reason.starts_with("cannot read it: "), "{e}");
    }
}
