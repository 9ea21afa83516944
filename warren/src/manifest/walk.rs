//! The typed walk over a YAML tree: reading a node as a string, number, bool,
//! duration, list or mapping of known keys, with every failure a `LoadError` at the
//! node's file:line naming its field path. Unknown keys are errors (with the known
//! ones suggested); keys Warren accepts but cannot honour are collected as ignored.

use super::yaml::{Key, Node, Value};
use super::{LoadError, Source};
use std::path::Path;

pub(crate) type R<T> = Result<T, LoadError>;

pub(crate) struct Cx<'a> {
    pub files: &'a [Source],
    /// Keys accepted but not honoured, as field paths, in order, once each.
    pub ignored: Vec<String>,
}

/// A mapping whose keys were checked against a list of known ones.
pub(crate) struct Fields<'n> {
    pub node: &'n Node,
    pub path: String,
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<(&'n Node, String)> {
        self.node.get(key).map(|n| (n, join(&self.path, key)))
    }

    pub fn has(&self, key: &str) -> bool {
        self.node.get(key).is_some_and(|n| n.value != Value::Null)
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn got(n: &Node) -> String {
    match &n.value {
        Value::Str { s, .. } => format!("{s:?}"),
        _ => n.kind().to_string(),
    }
}

impl<'a> Cx<'a> {
    pub fn new(files: &'a [Source]) -> Cx<'a> {
        Cx { files, ignored: vec![] }
    }

    pub fn err(&self, n: &Node, path: &str, message: impl Into<String>) -> LoadError {
        self.err_at(n.file, n.line, path, message)
    }

    pub fn err_at(&self, file: u16, line: u32, path: &str, message: impl Into<String>) -> LoadError {
        LoadError {
            file: self.file_name(file).to_string(),
            line,
            field: path.to_string(),
            message: message.into(),
        }
    }

    pub fn file_name(&self, file: u16) -> &str {
        self.files.get(file as usize).map(|s| s.name.as_str()).unwrap_or("")
    }

    /// The directory relative paths in this node's file resolve against.
    pub fn dir(&self, n: &Node) -> &Path {
        self.files
            .get(n.file as usize)
            .map(|s| s.dir.as_path())
            .unwrap_or(Path::new("."))
    }

    pub fn ignore(&mut self, path: String) {
        if !self.ignored.contains(&path) {
            self.ignored.push(path);
        }
    }

    /// Checks that `n` is a mapping whose keys are all in `known` or `ignored` (the
    /// latter are recorded as ignored); `x-` extension keys pass when `extensions`.
    pub fn fields<'n>(
        &mut self,
        n: &'n Node,
        path: &str,
        known: &[&str],
        ignored: &[&str],
        extensions: bool,
    ) -> R<Fields<'n>> {
        let entries = self.map(n, path)?;
        for (k, v) in entries {
            if known.contains(&k.name.as_str()) {
                continue;
            }
            let p = join(path, &k.name);
            if ignored.contains(&k.name.as_str()) {
                if v.value != Value::Null {
                    self.ignore(p);
                }
            } else if !(extensions && k.name.starts_with("x-")) {
                return Err(self.unknown_key(n, k, &p, known));
            }
        }
        Ok(Fields {
            node: n,
            path: path.to_string(),
        })
    }

    fn unknown_key(&self, n: &Node, k: &Key, path: &str, known: &[&str]) -> LoadError {
        let close = known.iter().find(|c| similar(c, &k.name));
        let message = match close {
            Some(c) => format!("unknown key {:?}; did you mean {c:?}?", k.name),
            None => format!("unknown key {:?}", k.name),
        };
        self.err_at(n.file, k.line, path, message)
    }

    pub fn map<'n>(&self, n: &'n Node, path: &str) -> R<&'n [(Key, Node)]> {
        match &n.value {
            Value::Map(m) => Ok(m),
            Value::Null => Ok(&[]),
            _ => Err(self.err(n, path, format!("expected a mapping, got {}", got(n)))),
        }
    }

    pub fn seq<'n>(&self, n: &'n Node, path: &str) -> R<&'n [Node]> {
        match &n.value {
            Value::Seq(s) => Ok(s),
            Value::Null => Ok(&[]),
            _ => Err(self.err(n, path, format!("expected a list, got {}", got(n)))),
        }
    }

    pub fn str(&self, n: &Node, path: &str) -> R<String> {
        match &n.value {
            Value::Str { s, .. } => Ok(s.clone()),
            _ => Err(self.err(n, path, format!("expected a string, got {}", got(n)))),
        }
    }

    pub fn u64(&self, n: &Node, path: &str) -> R<u64> {
        match &n.value {
            Value::Str { s, .. } => s
                .trim()
                .parse::<u64>()
                .map_err(|_| self.err(n, path, format!("expected a number, got {s:?}"))),
            _ => Err(self.err(n, path, format!("expected a number, got {}", got(n)))),
        }
    }

    pub fn u32(&self, n: &Node, path: &str) -> R<u32> {
        let v = self.u64(n, path)?;
        u32::try_from(v).map_err(|_| self.err(n, path, format!("{v} is too large")))
    }

    pub fn f64(&self, n: &Node, path: &str) -> R<f64> {
        match &n.value {
            Value::Str { s, .. } => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| self.err(n, path, format!("expected a number, got {s:?}"))),
            _ => Err(self.err(n, path, format!("expected a number, got {}", got(n)))),
        }
    }

    pub fn bool(&self, n: &Node, path: &str) -> R<bool> {
        if let Value::Str { s, .. } = &n.value {
            match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => return Ok(true),
                "false" | "no" | "off" | "0" => return Ok(false),
                _ => {}
            }
        }
        Err(self.err(n, path, format!("expected true or false, got {}", got(n))))
    }

    /// A string, or a number written as one (`cpus: 0.5`, `memory: 512M`).
    pub fn scalar(&self, n: &Node, path: &str) -> R<String> {
        self.str(n, path)
    }

    /// A string or a list of strings.
    pub fn str_list(&self, n: &Node, path: &str) -> R<Vec<String>> {
        match &n.value {
            Value::Str { s, .. } => Ok(vec![s.clone()]),
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, it)| self.str(it, &index(path, i)))
                .collect(),
            Value::Null => Ok(vec![]),
            Value::Map(_) => Err(self.err(n, path, "expected a string or a list of strings, got a mapping")),
        }
    }

    /// A list of strings (not a single string).
    pub fn strs(&self, n: &Node, path: &str) -> R<Vec<String>> {
        self.seq(n, path)?
            .iter()
            .enumerate()
            .map(|(i, it)| self.str(it, &index(path, i)))
            .collect()
    }

    /// A duration as compose writes them (Go's: `1m30s`, `1.5s`, `500ms`, `2h`).
    pub fn duration_ms(&self, n: &Node, path: &str) -> R<u64> {
        let s = self.str(n, path)?;
        parse_go_duration(&s).ok_or_else(|| {
            self.err(
                n,
                path,
                format!("invalid duration {s:?}: expected e.g. 10s, 1m30s, 500ms"),
            )
        })
    }

    /// `KEY=VALUE` list or mapping (labels, sysctls, environment): in order; a
    /// mapping's null value is `None`, as is a list entry without `=`.
    pub fn key_values(&self, n: &Node, path: &str) -> R<Vec<(String, Option<String>, Node)>> {
        match &n.value {
            Value::Null => Ok(vec![]),
            Value::Map(m) => m
                .iter()
                .map(|(k, v)| {
                    let p = join(path, &k.name);
                    let val = match &v.value {
                        Value::Null => None,
                        Value::Str { s, .. } => Some(s.clone()),
                        _ => return Err(self.err(v, &p, format!("expected a string, got {}", got(v)))),
                    };
                    Ok((k.name.clone(), val, v.clone()))
                })
                .collect(),
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, it)| {
                    let s = self.str(it, &index(path, i))?;
                    Ok(match s.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string()), it.clone()),
                        None => (s, None, it.clone()),
                    })
                })
                .collect(),
            Value::Str { .. } => Err(self.err(n, path, format!("expected a mapping or a list, got {}", got(n)))),
        }
    }
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units.
pub(crate) fn parse_go_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += num * ms;
    }
    (total.is_finite() && total < 1e15).then(|| total.round() as u64)
}

/// One edit apart, or the same ignoring `_`/`-`: worth a "did you mean".
fn similar(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    if norm(a) == norm(b) {
        return true;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Two neighbours swapped (`imgae`).
    if a.len() == b.len() {
        let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        if let [i, j] = diff[..] {
            if j == i + 1 && a[i] == b[j] && a[j] == b[i] {
                return true;
            }
        }
    }
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    // Levenshtein distance <= 1.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()] <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(10_000));
        assert_eq!(parse_go_duration("1m30s"), Some(90_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500));
        assert_eq!(parse_go_duration("500ms"), Some(500));
        assert_eq!(parse_go_duration("2h"), Some(7_200_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        for bad in ["", "10", "ten seconds", "10x", "s", "1..5s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
        assert!(similar("replicas", "replica"));
        assert!(similar("imgae", "image"));
        assert!(similar("working_dir", "workingdir"));
        assert!(!similar("image", "labels"));
    }
}
