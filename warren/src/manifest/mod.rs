//! Parses and interpolates declarative files (Warren YAML for `warren apply -f`,
//! Compose files for `warren stack deploy -c`) into a `model::Manifest`, with the
//! file:line of every field so that errors, the loader's and the manager's, name
//! them. No I/O beyond reading the named files, the files they name (env_file,
//! secret, config and certificate files, relative bind sources' existence) and the
//! `.env` beside the first file; no network. Diffing and applying is the manager's.

mod compose;
mod interp;
mod service;
mod walk;
mod warren;
mod yaml;

#[cfg(test)]
mod tests;

use crate::model::{Manifest, Origin, Origins};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What the loader produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    pub manifest: Manifest,
    pub origins: Origins,
    /// Things worth printing that are not errors (unset variables, as compose warns).
    pub warnings: Vec<String>,
}

/// How to read a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// By content: `apiVersion`/`kind` is Warren YAML, a `services` mapping Compose.
    #[default]
    Auto,
    Warren,
    Compose,
}

/// A loader error: `stack.yaml:14: services.web.deploy.replicas: expected a number, got "three"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(&self.file, self.line, &self.field, &self.message))]
pub struct LoadError {
    pub file: String,
    /// 0: the error is about the file as a whole (it cannot be read, ...).
    pub line: u32,
    /// Field path, e.g. `services.web.deploy.replicas`; empty for a file-level error.
    pub field: String,
    pub message: String,
}

fn render(file: &str, line: u32, field: &str, message: &str) -> String {
    let mut s = String::new();
    if !file.is_empty() {
        s.push_str(file);
        if line > 0 {
            s.push_str(&format!(":{line}"));
        }
        s.push_str(": ");
    }
    if !field.is_empty() {
        s.push_str(field);
        s.push_str(": ");
    }
    s.push_str(message);
    s
}

impl LoadError {
    fn file(file: &str, message: impl Into<String>) -> LoadError {
        LoadError {
            file: file.to_string(),
            line: 0,
            field: String::new(),
            message: message.into(),
        }
    }
}

/// The variables interpolation sees: the process environment and, unless turned
/// off, the `.env` file beside the first file; the process environment wins, as in
/// docker compose.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    dotenv: bool,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            dotenv: true,
        }
    }

    /// Given variables instead of the process's (tests, embedding).
    pub fn from_vars<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Env {
        Env {
            vars: vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            dotenv: true,
        }
    }

    /// Do not read a `.env` file.
    pub fn without_dotenv(mut self) -> Env {
        self.dotenv = false;
        self
    }
}

/// The variables of one load: the environment, then the `.env` file's.
pub(crate) struct Vars {
    env: BTreeMap<String, String>,
    dotenv: BTreeMap<String, String>,
}

impl Vars {
    pub fn get(&self, name: &str) -> Option<String> {
        self.env.get(name).or_else(|| self.dotenv.get(name)).cloned()
    }

    fn load(env: &Env, dir: &Path) -> Result<Vars, LoadError> {
        let mut dotenv = BTreeMap::new();
        let path = dir.join(".env");
        if env.dotenv && path.is_file() {
            let name = path.display().to_string();
            let text =
                std::fs::read_to_string(&path).map_err(|e| LoadError::file(&name, format!("cannot read: {e}")))?;
            let lookup = |k: &str| env.vars.get(k).cloned();
            let pairs = interp::parse_dotenv(&text, &lookup).map_err(|(line, message)| LoadError {
                file: name.clone(),
                line,
                field: String::new(),
                message,
            })?;
            dotenv = pairs.into_iter().collect();
        }
        Ok(Vars {
            env: env.vars.clone(),
            dotenv,
        })
    }
}

/// One file read: its name as shown in errors and the directory its relative
/// paths resolve against.
pub(crate) struct Source {
    pub name: String,
    pub dir: PathBuf,
    pub text: String,
}

fn read_source(path: &Path) -> Result<Source, LoadError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| LoadError::file("<stdin>", format!("cannot read: {e}")))?;
        return Ok(Source {
            name: "<stdin>".into(),
            dir: PathBuf::from("."),
            text,
        });
    }
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| LoadError::file(&name, format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| LoadError::file(&name, "is not UTF-8 text"))?;
    Ok(Source {
        name,
        dir: dir_of(path),
        text,
    })
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `apply -f` arguments to files: a directory stands for its `*.yaml` and `*.yml`
/// files (not recursively), sorted by name.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let name = p.display().to_string();
            let rd = std::fs::read_dir(p).map_err(|e| LoadError::file(&name, format!("cannot read: {e}")))?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            if files.is_empty() {
                return Err(LoadError::file(&name, "holds no *.yaml or *.yml file"));
            }
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(LoadError::file("", "no file given"));
    }
    Ok(out)
}

/// The directory of the first argument: where `.env` is looked for.
fn first_dir(paths: &[PathBuf]) -> PathBuf {
    match paths.first() {
        Some(p) if p.is_dir() => p.clone(),
        Some(p) if p != Path::new("-") => dir_of(p),
        _ => PathBuf::from("."),
    }
}

fn parse_sources(sources: &[Source]) -> Result<Vec<Vec<yaml::Node>>, LoadError> {
    sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            yaml::parse(&s.text, i as u16).map_err(|e| LoadError {
                file: s.name.clone(),
                line: e.line.max(1),
                field: String::new(),
                message: format!("invalid YAML: {}", e.message),
            })
        })
        .collect()
}

/// `apply -f`: files, directories (every *.yaml/*.yml, sorted), or "-" for stdin;
/// several documents per file; each document Warren YAML or a compose file.
pub fn load_apply(paths: &[PathBuf], env: &Env) -> Result<Loaded, LoadError> {
    load_apply_as(paths, Format::Auto, env)
}

/// `load_apply` with the format forced instead of guessed from each document.
pub fn load_apply_as(paths: &[PathBuf], format: Format, env: &Env) -> Result<Loaded, LoadError> {
    let vars = Vars::load(env, &first_dir(paths))?;
    let files = expand(paths)?;
    let sources = files.iter().map(|p| read_source(p)).collect::<Result<Vec<_>, _>>()?;
    apply_sources(&sources, format, &vars)
}

fn apply_sources(sources: &[Source], format: Format, vars: &Vars) -> Result<Loaded, LoadError> {
    let docs = parse_sources(sources)?;
    let mut cx = walk::Cx::new(sources);
    let mut out = Collect::default();
    for (file, file_docs) in docs.into_iter().enumerate() {
        if file_docs.is_empty() {
            return Err(LoadError::file(&sources[file].name, "holds no YAML document"));
        }
        for mut doc in file_docs {
            let f = match format {
                Format::Auto => detect(&cx, &doc)?,
                f => f,
            };
            let mut unset = Vec::new();
            interpolate(&cx, &mut doc, "", vars, &mut unset)?;
            out.warn_unset(&cx, unset);
            match f {
                Format::Compose => {
                    let part = compose::convert(&mut cx, &doc, vars)?;
                    out.add(&cx, part)?;
                }
                _ => {
                    let part = warren::convert(&mut cx, &doc, vars)?;
                    out.add(&cx, part)?;
                }
            }
        }
    }
    let mut loaded = out.finish(&cx)?;
    loaded.manifest.ignored = cx.ignored;
    Ok(loaded)
}

/// `stack deploy -c F1 -c F2 NAME`: compose files merged as compose does (later
/// files override), each interpolated first.
pub fn load_stack(paths: &[PathBuf], stack: &str, env: &Env) -> Result<Loaded, LoadError> {
    crate::model::validate_name("stack", stack).map_err(|e| LoadError::file("", e.to_string()))?;
    if paths.is_empty() {
        return Err(LoadError::file("", "no compose file given (-c FILE)"));
    }
    let vars = Vars::load(env, &first_dir(paths))?;
    let sources = paths.iter().map(|p| read_source(p)).collect::<Result<Vec<_>, _>>()?;
    stack_sources(&sources, stack, &vars)
}

fn stack_sources(sources: &[Source], stack: &str, vars: &Vars) -> Result<Loaded, LoadError> {
    let docs = parse_sources(sources)?;
    let mut cx = walk::Cx::new(sources);
    let mut merged: Option<yaml::Node> = None;
    let mut out = Collect::default();
    for (file, mut file_docs) in docs.into_iter().enumerate() {
        let name = &sources[file].name;
        if file_docs.len() != 1 {
            return Err(LoadError::file(
                name,
                format!("a compose file holds one YAML document, this one {}", file_docs.len()),
            ));
        }
        let mut doc = file_docs.remove(0);
        if detect(&cx, &doc)? != Format::Compose {
            return Err(LoadError {
                file: name.clone(),
                line: doc.line,
                field: String::new(),
                message: "is Warren YAML, not a compose file: use warren apply -f".into(),
            });
        }
        let mut unset = Vec::new();
        interpolate(&cx, &mut doc, "", vars, &mut unset)?;
        out.warn_unset(&cx, unset);
        merged = Some(match merged {
            None => doc,
            Some(base) => compose::merge(base, doc, ""),
        });
    }
    let doc = merged.expect("one file at least");
    let part = compose::convert(&mut cx, &doc, vars)?;
    out.add(&cx, part)?;
    let mut loaded = out.finish(&cx)?;
    loaded.manifest.stack = Some(stack.to_string());
    loaded.manifest.ignored = cx.ignored;
    Ok(loaded)
}

/// A manager error with a field path shown at the line it came from:
/// `file:line: path: message` (or `path: message` when the path is unknown).
pub fn locate(origins: &Origins, field_path: &str, message: &str) -> String {
    match origins.find(field_path) {
        Some(o) => render(&o.file, o.line, field_path, message),
        None => render("", 0, field_path, message),
    }
}

fn detect(cx: &walk::Cx, doc: &yaml::Node) -> Result<Format, LoadError> {
    if doc.get("apiVersion").is_some() || doc.get("kind").is_some() {
        return Ok(Format::Warren);
    }
    if matches!(doc.get("services").map(|n| &n.value), Some(yaml::Value::Map(_))) {
        return Ok(Format::Compose);
    }
    Err(cx.err(
        doc,
        "",
        "neither Warren YAML (apiVersion and kind) nor a compose file (a services mapping)",
    ))
}

/// Interpolates every string value (not keys) in place, as compose does before it
/// reads a file.
fn interpolate(
    cx: &walk::Cx,
    n: &mut yaml::Node,
    path: &str,
    vars: &Vars,
    unset: &mut Vec<(String, u16, u32)>,
) -> Result<(), LoadError> {
    let lookup = |k: &str| vars.get(k);
    let (file, line) = (n.file, n.line);
    match &mut n.value {
        yaml::Value::Str { s, .. } => {
            if s.contains('$') {
                let mut names = Vec::new();
                *s = interp::interpolate(s, &lookup, &mut names)
                    .map_err(|e| cx.err_at(file, line, path, e.to_string()))?;
                unset.extend(names.into_iter().map(|v| (v, file, line)));
            }
        }
        yaml::Value::Seq(items) => {
            for (i, it) in items.iter_mut().enumerate() {
                interpolate(cx, it, &walk::index(path, i), vars, unset)?;
            }
        }
        yaml::Value::Map(m) => {
            for (k, v) in m.iter_mut() {
                interpolate(cx, v, &walk::join(path, &k.name), vars, unset)?;
            }
        }
        yaml::Value::Null => {}
    }
    Ok(())
}

/// One document's objects, with the origins of their fields.
#[derive(Default)]
pub(crate) struct Part {
    pub manifest: Manifest,
    pub origins: Origins,
}

/// Gathers the documents' parts into one manifest, refusing two objects of one
/// kind and name.
#[derive(Default)]
struct Collect {
    loaded: Loaded,
}

impl Collect {
    fn warn_unset(&mut self, cx: &walk::Cx, unset: Vec<(String, u16, u32)>) {
        for (var, file, line) in unset {
            let w = format!(
                "{}:{line}: the {var} variable is not set, defaulting to a blank string",
                cx.file_name(file)
            );
            if !self.loaded.warnings.contains(&w) {
                self.loaded.warnings.push(w);
            }
        }
    }

    fn add(&mut self, cx: &walk::Cx, part: Part) -> Result<(), LoadError> {
        let m = &mut self.loaded.manifest;
        let o = &self.loaded.origins;
        let dup = |kind: &str, name: &str| -> LoadError {
            let path = format!("{kind}.{name}");
            let first = o
                .find(&path)
                .map(|o| format!(" (first at {}:{})", o.file, o.line))
                .unwrap_or_default();
            let at = part.origins.find(&path).cloned().unwrap_or_default();
            LoadError {
                file: at.file,
                line: at.line,
                field: path,
                message: format!("is defined twice{first}"),
            }
        };
        let p = part.manifest;
        macro_rules! merge_kind {
            ($field:ident, $kind:literal) => {
                for x in p.$field {
                    if m.$field.iter().any(|y| y.name == x.name) {
                        return Err(dup($kind, &x.name));
                    }
                    m.$field.push(x);
                }
            };
        }
        merge_kind!(services, "services");
        merge_kind!(secrets, "secrets");
        merge_kind!(configs, "configs");
        merge_kind!(volumes, "volumes");
        merge_kind!(networks, "networks");
        merge_kind!(ingresses, "ingresses");
        merge_kind!(certificates, "certificates");
        let _ = cx;
        for (k, v) in part.origins.0 {
            self.loaded.origins.0.entry(k).or_insert(v);
        }
        Ok(())
    }

    /// Checks across documents: what services reference exists, no port published twice.
    fn finish(self, cx: &walk::Cx) -> Result<Loaded, LoadError> {
        let l = self.loaded;
        service::check_references(cx, &l.manifest, &l.origins)?;
        Ok(l)
    }
}

pub(crate) fn origin(cx: &walk::Cx, file: u16, line: u32) -> Origin {
    Origin {
        file: cx.file_name(file).to_string(),
        line,
    }
}

/// Records the origin of every key and list item under `n` as `prefix.key...`.
pub(crate) fn record(cx: &walk::Cx, origins: &mut Origins, n: &yaml::Node, prefix: &str) {
    match &n.value {
        yaml::Value::Map(m) => {
            for (k, v) in m {
                let p = walk::join(prefix, &k.name);
                origins.insert(p.clone(), origin(cx, v.file, k.line));
                record(cx, origins, v, &p);
            }
        }
        yaml::Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let p = walk::index(prefix, i);
                origins.insert(p.clone(), origin(cx, it.file, it.line));
                record(cx, origins, it, &p);
            }
        }
        _ => {}
    }
}
