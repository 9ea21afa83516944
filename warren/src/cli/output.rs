//! Printing for the CLI: aligned tables, JSON, and Docker-style relative times.

use serde::Serialize;

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(&c);
            } else {
                out.push_str(&format!("{c:<width$}   ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub fn json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

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
}
