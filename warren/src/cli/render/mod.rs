//! What the CLI prints and how: aligned tables, JSON, Docker-style relative times,
//! the view structs of each noun (`services`, `nodes`, `secrets_volumes`, `cluster`),
//! and the one way out to standard output (`emit`). Rendering is pure (it returns
//! text); only `emit` writes, and it turns a closed pipe (`warren service ps web |
//! head -1`) into `StdoutClosed`, which ends the command quietly with status 0.

pub mod cluster;
pub mod nodes;
pub mod secrets_volumes;
pub mod services;

use serde::Serialize;
use std::io::Write;

/// The reader of standard output went away (a closed pipe): nothing more to say.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// The command failed and already said why on standard error, one line per failure.
#[derive(Debug, thiserror::Error)]
#[error("the command failed")]
pub struct Reported;

/// Writes `text` to standard output and flushes it, so that a follower (`logs -f`,
/// `events`) shows each line as it comes.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// `emit` with a line break. A command that changes several objects prints each one
/// as it goes and keeps the first failure for the end (`printed = printed.and(line(..))`),
/// so that a closed pipe does not leave half of the objects unchanged.
pub fn line(text: &str) -> anyhow::Result<()> {
    emit(&format!("{text}\n"))
}

/// Writes one line to standard error. A closed standard error leaves nobody to tell,
/// so its failure is ignored rather than a panic.
pub fn error_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Text built line by line.
#[derive(Default)]
struct Text(String);

impl Text {
    fn line(&mut self, line: impl std::fmt::Display) {
        self.0.push_str(&line.to_string());
        self.0.push('\n');
    }
}

/// A reply the CLI cannot read (a field out of range): named as the server named it.
fn invalid(e: crate::model::ValidationError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(&c);
            } else {
                out.push_str(&format!("{c:<width$}   ", width = widths[i]));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
    text
}

/// Pretty JSON and a line break, as `--format json` prints it. Read from a
/// manager without quorum, every object (or every object of a list) carries
/// `"stale": true`.
pub fn json<T: Serialize>(v: &T) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(v)?;
    if crate::cli::client::stale() {
        mark_stale(&mut value);
    }
    Ok(format!("{}\n", serde_json::to_string_pretty(&value)?))
}

fn mark_stale(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.insert("stale".into(), serde_json::Value::Bool(true));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mark_stale),
        _ => {}
    }
}

/// What a command that printed a possibly stale answer adds on standard error.
pub const STALE_NOTE: &str =
    "note: no quorum of managers answered; this is the state as this manager last knew it and may be stale";

/// "5 seconds ago", "3 minutes ago", ...
pub fn ago(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = (crate::model::now_ms() - ms).max(0) / 1000;
    let (n, unit) = match secs {
        0..=1 => return "about a second ago".into(),
        2..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86399 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = crate::model::now_ms();
        assert_eq!(ago(now), "about a second ago");
        assert_eq!(ago(now - 5_000), "5 seconds ago");
        assert_eq!(ago(now - 61_000), "1 minute ago");
        assert_eq!(ago(now - 2 * 3_600_000), "2 hours ago");
        assert_eq!(ago(0), "-");
    }

    #[test]
    fn tables_align_columns_and_trim_trailing_space() {
        let t = table(
            &["ID", "NAME", "PORTS"],
            vec![
                vec!["a".into(), "web".into(), "".into()],
                vec!["bcd".into(), "x".into(), "*:80->80/tcp".into()],
            ],
        );
        assert_eq!(t, "ID    NAME   PORTS\na     web\nbcd   x      *:80->80/tcp\n");
    }
}
