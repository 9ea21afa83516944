//! Variable interpolation as `docker compose config` documents it (`$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
//! `${VAR:+alt}`, `${VAR+alt}`, `$$` for a literal `$`, defaults that interpolate in
//! turn), and the `.env` / `env_file` syntax (comments, `export`, single quotes
//! literal, double quotes with escapes and interpolation, inline ` #` comments).

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum InterpError {
    /// Not a valid interpolation: the message says where.
    Syntax(String),
    /// `${VAR:?msg}` / `${VAR?msg}` with VAR unset (or empty).
    Required { var: String, message: String },
}

impl std::fmt::Display for InterpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpError::Syntax(why) => write!(
                f,
                "invalid interpolation format: {why}; you may need to escape any $ with another $"
            ),
            InterpError::Required { var, message } if message.is_empty() => {
                write!(f, "required variable {var} is missing a value")
            }
            InterpError::Required { var, message } => {
                write!(f, "required variable {var} is missing a value: {message}")
            }
        }
    }
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Interpolates `input`; names of variables used while unset go to `unset` (compose
/// warns about them and substitutes an empty string).
pub(crate) fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<String, InterpError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                let start = i + 2;
                let end = closing_brace(&chars, start)
                    .ok_or_else(|| InterpError::Syntax(format!("{input:?} has an unterminated ${{")))?;
                let body: String = chars[start..end].iter().collect();
                out.push_str(&braced(input, &body, lookup, unset)?);
                i = end + 1;
            }
            Some(&n) if is_name_start(n) => {
                let mut j = i + 1;
                while j < chars.len() && is_name_char(chars[j]) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                match lookup(&name) {
                    Some(v) => out.push_str(&v),
                    None => unset.push(name),
                }
                i = j;
            }
            _ => {
                return Err(InterpError::Syntax(format!(
                    "{input:?} has a $ that starts no variable"
                )))
            }
        }
    }
    Ok(out)
}

/// The index of the `}` closing a `${` whose body starts at `start`, counting
/// nested `${...}` in defaults.
fn closing_brace(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '$' if chars.get(i + 1) == Some(&'$') => i += 1,
            '$' if chars.get(i + 1) == Some(&'{') => {
                depth += 1;
                i += 1;
            }
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(
    input: &str,
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<String, InterpError> {
    let name_len = body
        .char_indices()
        .find(|&(i, c)| !(if i == 0 { is_name_start(c) } else { is_name_char(c) }))
        .map(|(i, _)| i)
        .unwrap_or(body.len());
    let (name, rest) = body.split_at(name_len);
    if name.is_empty() {
        return Err(InterpError::Syntax(format!(
            "{input:?} has no variable name in ${{{body}}}"
        )));
    }
    let value = lookup(name);
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let arg = |s: &str, unset: &mut Vec<String>| interpolate(s, lookup, unset);
    let ops: [(&str, bool); 6] = [
        (":-", true),
        ("-", false),
        (":?", true),
        ("?", false),
        (":+", true),
        ("+", false),
    ];
    if rest.is_empty() {
        if !set {
            unset.push(name.to_string());
        }
        return Ok(value.unwrap_or_default());
    }
    for (op, colon) in ops {
        let Some(a) = rest.strip_prefix(op) else { continue };
        let present = if colon { non_empty } else { set };
        return match op.trim_start_matches(':') {
            "-" if present => Ok(value.unwrap_or_default()),
            "-" => arg(a, unset),
            "?" if present => Ok(value.unwrap_or_default()),
            "?" => Err(InterpError::Required {
                var: name.to_string(),
                message: arg(a, unset)?,
            }),
            _ if present => arg(a, unset),
            _ => Ok(String::new()),
        };
    }
    Err(InterpError::Syntax(format!(
        "{input:?}: unknown modifier {rest:?} in ${{{body}}} (expected :-, -, :?, ?, :+ or +)"
    )))
}

/// A `.env` or `env_file` file: `KEY=VALUE` pairs in order. `lookup` resolves a bare
/// `KEY` line and variables used in values (after the file's own earlier keys).
/// Errors carry the 1-based line.
pub(crate) fn parse_dotenv(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, (u32, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let lineno = i as u32 + 1;
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim_start())),
            None => (line, None),
        };
        let valid = key.chars().next().is_some_and(is_name_start)
            && key.chars().all(|c| is_name_char(c) || c == '.' || c == '-');
        if !valid {
            return Err((lineno, format!("invalid variable name {key:?}")));
        }
        let Some(value) = value else {
            if let Some(v) = lookup(key) {
                out.push((key.to_string(), v));
            }
            continue;
        };
        let own = out.clone();
        let scoped = |name: &str| {
            own.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| lookup(name))
        };
        let mut unset = Vec::new();
        let value = if let Some(q) = value.chars().next().filter(|c| *c == '\'' || *c == '"') {
            // A quoted value may run over several lines.
            let mut raw = value[1..].to_string();
            let close = loop {
                if let Some(end) = closing_quote(&raw, q) {
                    break end;
                }
                let Some(next) = lines.get(i) else {
                    return Err((lineno, format!("{key}: unterminated {q} quote")));
                };
                raw.push('\n');
                raw.push_str(next);
                i += 1;
            };
            let after = raw[close + 1..].trim();
            if !after.is_empty() && !after.starts_with('#') {
                return Err((lineno, format!("{key}: unexpected {after:?} after the closing quote")));
            }
            let inner = &raw[..close];
            if q == '\'' {
                inner.to_string()
            } else {
                let unescaped = unescape(inner);
                interpolate(&unescaped, &scoped, &mut unset).map_err(|e| (lineno, format!("{key}: {e}")))?
            }
        } else {
            let v = match value.find(" #").or_else(|| value.find("\t#")) {
                Some(cut) => &value[..cut],
                None => value,
            };
            interpolate(v.trim_end(), &scoped, &mut unset).map_err(|e| (lineno, format!("{key}: {e}")))?
        };
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn closing_quote(s: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if q == '"' && c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == q && !escaped {
            return Some(i);
        }
        escaped = false;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            // `\$` stays `$$` so that interpolation keeps it literal.
            Some('$') => out.push_str("$$"),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            "TAG" => Some("1.2".into()),
            _ => None,
        }
    }

    fn i(s: &str) -> Result<String, InterpError> {
        interpolate(s, &env, &mut Vec::new())
    }

    /// The table of compose's interpolation documentation.
    #[test]
    fn interpolation_follows_compose() {
        let cases = [
            ("$SET", "value"),
            ("${SET}", "value"),
            ("img:${TAG}", "img:1.2"),
            ("${UNSET}", ""),
            ("a${UNSET}b", "ab"),
            ("${UNSET:-default}", "default"),
            ("${EMPTY:-default}", "default"),
            ("${SET:-default}", "value"),
            ("${UNSET-default}", "default"),
            ("${EMPTY-default}", ""),
            ("${SET:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${EMPTY?err}", ""),
            ("$$SET", "$SET"),
            ("$${SET}", "${SET}"),
            ("${UNSET:-${SET}}", "value"),
            ("${UNSET:-${ALSO:-deep}}", "deep"),
            ("${UNSET:-a}}", "a}"),
            ("$SET.x", "value.x"),
            ("${UNSET:-}", ""),
            ("no vars", "no vars"),
        ];
        for (input, want) in cases {
            assert_eq!(i(input).unwrap(), want, "{input}");
        }
        assert_eq!(
            i("${UNSET:?set it}").unwrap_err().to_string(),
            "required variable UNSET is missing a value: set it"
        );
        assert_eq!(
            i("${EMPTY:?}").unwrap_err().to_string(),
            "required variable EMPTY is missing a value"
        );
        assert!(matches!(i("${UNSET?x}"), Err(InterpError::Required { .. })));
        for bad in ["${", "${SET", "$ x", "${}", "${1A}", "${SET:x}", "$(pwd)", "50$"] {
            assert!(matches!(i(bad), Err(InterpError::Syntax(_))), "{bad}");
        }
        let mut unset = vec![];
        interpolate("$A ${B:-x} ${C}", &env, &mut unset).unwrap();
        assert_eq!(unset, ["A", "C"]);
    }

    #[test]
    fn dotenv_syntax() {
        let text = "# comment\n\nexport A=1\nB = two words  # inline\nC='single $SET # kept'\nD=\"dq \\\"x\\\" \\n $SET ${A}\"\nE=${SET}-$A\nF=\"multi\nline\"\nSET\nNOPE\nG=a#b\nH=\n";
        let got = parse_dotenv(text, &env).unwrap();
        let want = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "single $SET # kept"),
            ("D", "dq \"x\" \n value 1"),
            ("E", "value-1"),
            ("F", "multi\nline"),
            ("SET", "value"),
            ("G", "a#b"),
            ("H", ""),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        assert_eq!(parse_dotenv("A=1\nBAD KEY=2\n", &env).unwrap_err().0, 2);
        assert_eq!(parse_dotenv("A=\"open\n", &env).unwrap_err().0, 1);
        assert_eq!(parse_dotenv("A=${\n", &env).unwrap_err().0, 1);
    }
}
