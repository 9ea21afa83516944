//! YAML documents as a tree in which every node and key knows the file and line it
//! came from, built from `saphyr-parser`'s events. Anchors and aliases are resolved
//! (an alias is a copy of its anchor's node), merge keys (`<<: *base`) are applied,
//! and duplicate keys are refused. Scalars stay strings: their type is decided by
//! the field that reads them (a compose `replicas: ${N}` is a string until then).

use saphyr_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    /// Index into the loader's list of files.
    pub file: u16,
    /// 1-based.
    pub line: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    /// `plain`: written without quotes (only then do `true` or `12` read as a bool
    /// or number in the eyes of a type check that wants a string; the loader
    /// accepts both spellings, as compose does after interpolation).
    Str {
        s: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub line: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SyntaxError {
    pub line: u32,
    pub message: String,
}

impl Node {
    pub fn str(s: impl Into<String>, file: u16, line: u32) -> Node {
        Node {
            value: Value::Str {
                s: s.into(),
                plain: false,
            },
            file,
            line,
        }
    }

    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Str { .. } => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn key_line(&self, key: &str) -> Option<u32> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(k, _)| k.line),
            _ => None,
        }
    }
}

/// Aliases copy nodes: a file of nested aliases ("billion laughs") would grow
/// without bound, so the copies are capped.
const MAX_ALIAS_NODES: usize = 200_000;
/// Nesting deeper than this is refused rather than walked recursively.
const MAX_DEPTH: usize = 200;

enum Frame {
    Seq {
        items: Vec<Node>,
        anchor: usize,
        line: u32,
    },
    Map {
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
        merges: Vec<Node>,
        anchor: usize,
        line: u32,
    },
}

/// Every document of `text` (an empty stream has none).
pub(crate) fn parse(text: &str, file: u16) -> Result<Vec<Node>, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut copied = 0usize;
    while let Some(ev) = parser.next_event() {
        let (ev, span) = ev.map_err(|e| SyntaxError {
            line: e.marker().line() as u32,
            message: e.info().to_string(),
        })?;
        let line = span.start.line() as u32;
        let done = match ev {
            Event::StreamStart | Event::DocumentStart(_) | Event::DocumentEnd | Event::Nothing => None,
            Event::StreamEnd => break,
            Event::Alias(id) => {
                let n = anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    line,
                    message: "alias to an unknown anchor".into(),
                })?;
                copied += size(&n);
                if copied > MAX_ALIAS_NODES {
                    return Err(SyntaxError {
                        line,
                        message: format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                    });
                }
                Some(n)
            }
            Event::Scalar(s, style, anchor, _tag) => {
                let plain = style == ScalarStyle::Plain;
                let value = if plain && matches!(&*s, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Str {
                        s: s.into_owned(),
                        plain,
                    }
                };
                let n = Node { value, file, line };
                if anchor > 0 {
                    anchors.insert(anchor, n.clone());
                }
                Some(n)
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    items: vec![],
                    anchor,
                    line,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map {
                    entries: vec![],
                    key: None,
                    merges: vec![],
                    anchor,
                    line,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { items, anchor, line }) => {
                    let n = Node {
                        value: Value::Seq(items),
                        file,
                        line,
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, n.clone());
                    }
                    Some(n)
                }
                _ => {
                    return Err(SyntaxError {
                        line,
                        message: "unbalanced sequence".into(),
                    })
                }
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    mut entries,
                    merges,
                    anchor,
                    line,
                    ..
                }) => {
                    apply_merges(&mut entries, merges)?;
                    let n = Node {
                        value: Value::Map(entries),
                        file,
                        line,
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, n.clone());
                    }
                    Some(n)
                }
                _ => {
                    return Err(SyntaxError {
                        line,
                        message: "unbalanced mapping".into(),
                    })
                }
            },
        };
        if stack.len() > MAX_DEPTH {
            return Err(SyntaxError {
                line,
                message: format!("nested more than {MAX_DEPTH} levels deep"),
            });
        }
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries, key, merges, ..
            }) => match key.take() {
                None => {
                    let name = match node.value {
                        Value::Str { s, .. } => s,
                        _ => {
                            return Err(SyntaxError {
                                line: node.line,
                                message: format!("a mapping key must be a string, not {}", node.kind()),
                            })
                        }
                    };
                    *key = Some(Key { name, line: node.line });
                }
                Some(k) => {
                    let mut node = node;
                    if matches!(node.value, Value::Map(_) | Value::Seq(_)) {
                        // A mapping or list is where its key names it: errors about
                        // it as a whole point at that line, not at its first item.
                        node.line = k.line;
                    }
                    if k.name == "<<" {
                        merges.push(node);
                    } else if entries.iter().any(|(e, _)| e.name == k.name) {
                        return Err(SyntaxError {
                            line: k.line,
                            message: format!("duplicate key {:?}", k.name),
                        });
                    } else {
                        entries.push((k, node));
                    }
                }
            },
        }
    }
    Ok(docs)
}

/// YAML's merge key: keys written in the mapping win, then the merged mappings in
/// the order given.
fn apply_merges(entries: &mut Vec<(Key, Node)>, merges: Vec<Node>) -> Result<(), SyntaxError> {
    for m in merges {
        let maps = match m.value {
            Value::Map(_) => vec![m],
            Value::Seq(items) => items,
            _ => {
                return Err(SyntaxError {
                    line: m.line,
                    message: "a merge key (<<) takes a mapping or a list of mappings".into(),
                })
            }
        };
        for map in maps {
            let line = map.line;
            let Value::Map(src) = map.value else {
                return Err(SyntaxError {
                    line,
                    message: "a merge key (<<) takes a mapping or a list of mappings".into(),
                });
            };
            for (k, v) in src {
                if !entries.iter().any(|(e, _)| e.name == k.name) {
                    entries.push((k, v));
                }
            }
        }
    }
    Ok(())
}

fn size(n: &Node) -> usize {
    match &n.value {
        Value::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Map(m) => 1 + m.iter().map(|(_, v)| 1 + size(v)).sum::<usize>(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_anchors_and_merge_keys() {
        let text = "x-base: &base\n  image: a:1\n  user: nobody\nweb:\n  <<: *base\n  user: root\n---\nb: 2\n";
        let docs = parse(text, 0).unwrap();
        assert_eq!(docs.len(), 2);
        let web = docs[0].get("web").unwrap();
        assert_eq!(web.line, 4);
        assert_eq!(
            web.get("user").unwrap().value,
            Value::Str {
                s: "root".into(),
                plain: true
            }
        );
        assert_eq!(web.get("image").unwrap().line, 2);
        assert_eq!(docs[1].key_line("b"), Some(8));
        let e = parse("a: 1\na: 2\n", 0).unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (2, "duplicate key \"a\""));
        assert!(parse("a: [1\n", 0).is_err());
        assert_eq!(parse("a: ~\n", 0).unwrap()[0].get("a").unwrap().value, Value::Null);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        assert!(parse(&text, 0).unwrap_err().message.contains("aliases expand"));
    }
}
