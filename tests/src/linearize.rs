//! A linearizability checker for histories of per-key registers, for the fault
//! tests (issue 16 item 3): each operation has its invoke and complete times and an
//! outcome; the search is Wing & Gong's with Lowe's memoisation of (linearized set,
//! state), as Porcupine does it, one key at a time. Also `lost_writes`: the
//! acknowledged writes a final read no longer shows.
//!
//! Model of one key: absent (`None`) or a value. `Create(v)` needs it absent,
//! `Write(v)` needs it present, `Read(r)` sees exactly `r`. An operation that
//! failed definitely never happened and is left out; one whose outcome is unknown
//! may take effect at any point after its invoke, or never.

use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Definitely not applied.
    Failed,
    /// Possibly applied: the answer was lost or the server said it cannot tell.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create(u64),
    Write(u64),
    Read(Option<u64>),
}

#[derive(Clone, Debug)]
pub struct Event {
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub outcome: Outcome,
    /// Nanoseconds since the history began.
    pub invoke: u128,
    pub complete: u128,
}

impl Event {
    fn is_write(&self) -> bool {
        !matches!(self.op, Op::Read(_))
    }
}

#[derive(Debug)]
pub struct Violation {
    pub key: String,
    /// The key's operations the search had to place, by invoke time.
    pub ops: Vec<Event>,
    /// The most operations any order placed before getting stuck.
    pub longest_prefix: usize,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "key {}: no linearization of its {} operations (at most {} placed); the operations:",
            self.key,
            self.ops.len(),
            self.longest_prefix
        )?;
        for e in &self.ops {
            writeln!(
                f,
                "  client {} {:?} {:?} [{:.3} s, {:.3} s]",
                e.client,
                e.op,
                e.outcome,
                e.invoke as f64 / 1e9,
                if e.complete == u128::MAX {
                    f64::INFINITY
                } else {
                    e.complete as f64 / 1e9
                }
            )?;
        }
        Ok(())
    }
}

/// The operations of one key the search must consider: definite failures and
/// reads without an answer dropped, unknown outcomes open-ended, and unknown
/// updates whose value nobody read dropped (never taking effect explains as much
/// as taking effect, since an update needs the key present either way).
fn relevant(events: &[&Event]) -> Vec<Event> {
    let read_values: HashSet<u64> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Ok)
        .filter_map(|e| match e.op {
            Op::Read(Some(v)) => Some(v),
            _ => None,
        })
        .collect();
    let mut ops: Vec<Event> = events
        .iter()
        .filter(|e| match (e.outcome, e.op) {
            (Outcome::Failed, _) => false,
            (Outcome::Unknown, Op::Read(_)) => false,
            (Outcome::Unknown, Op::Write(v)) => read_values.contains(&v),
            _ => true,
        })
        .map(|e| {
            let mut e = (*e).clone();
            if e.outcome == Outcome::Unknown {
                e.complete = u128::MAX;
            }
            e
        })
        .collect();
    ops.sort_by_key(|e| (e.invoke, e.complete));
    ops
}

fn step(state: Option<u64>, op: Op) -> Option<Option<u64>> {
    match op {
        Op::Create(v) => state.is_none().then_some(Some(v)),
        Op::Write(v) => state.is_some().then_some(Some(v)),
        Op::Read(r) => (state == r).then_some(state),
    }
}

struct Search<'a> {
    ops: &'a [Event],
    done: Vec<bool>,
    seen: HashSet<(Vec<u64>, Option<u64>)>,
    longest: usize,
    placed: usize,
}

impl Search<'_> {
    fn bits(&self) -> Vec<u64> {
        let mut b = vec![0u64; self.done.len().div_ceil(64)];
        for (i, d) in self.done.iter().enumerate() {
            if *d {
                b[i / 64] |= 1 << (i % 64);
            }
        }
        b
    }

    fn run(&mut self, state: Option<u64>) -> bool {
        // Done when every operation that certainly happened is placed; unknown ones
        // left over never took effect.
        if self
            .ops
            .iter()
            .zip(&self.done)
            .all(|(e, d)| *d || e.outcome == Outcome::Unknown)
        {
            return true;
        }
        if !self.seen.insert((self.bits(), state)) {
            return false;
        }
        // An operation can go next only if nothing still unplaced completed before
        // it was invoked.
        let horizon = self
            .ops
            .iter()
            .zip(&self.done)
            .filter(|(_, d)| !**d)
            .map(|(e, _)| e.complete)
            .min()
            .unwrap_or(u128::MAX);
        for i in 0..self.ops.len() {
            if self.done[i] {
                continue;
            }
            let e = &self.ops[i];
            if e.invoke > horizon {
                break;
            }
            let Some(next) = step(state, e.op) else {
                continue;
            };
            self.done[i] = true;
            self.placed += 1;
            self.longest = self.longest.max(self.placed);
            let found = self.run(next);
            self.done[i] = false;
            self.placed -= 1;
            if found {
                return true;
            }
        }
        false
    }
}

/// Checks each key's history against the register model; the first key that has
/// no linearization.
pub fn check(history: &[Event]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(&e.key).or_default().push(e);
    }
    for (key, events) in by_key {
        let ops = relevant(&events);
        let mut s = Search {
            ops: &ops,
            done: vec![false; ops.len()],
            seen: HashSet::new(),
            longest: 0,
            placed: 0,
        };
        if !s.run(None) {
            return Err(Violation {
                key: key.to_string(),
                longest_prefix: s.longest,
                ops,
            });
        }
    }
    Ok(())
}

/// The acknowledged writes that `finals` (each key's value read after the faults)
/// does not show although the write of the final value could not have come after
/// them.
pub fn lost_writes<'a>(history: &'a [Event], finals: &BTreeMap<String, Option<u64>>) -> Vec<&'a Event> {
    let value = |e: &Event| match e.op {
        Op::Create(v) | Op::Write(v) => Some(v),
        Op::Read(_) => None,
    };
    history
        .iter()
        .filter(|w| w.is_write() && w.outcome == Outcome::Ok)
        .filter(|w| {
            let fin = finals.get(&w.key).copied().flatten();
            if fin.is_none() {
                return true;
            }
            if fin == value(w) {
                return false;
            }
            // Replaced by the write of the final value, if that did not end
            // before this one began.
            let replaced = history.iter().any(|o| {
                o.key == w.key
                    && value(o) == fin
                    && o.outcome != Outcome::Failed
                    && (o.outcome == Outcome::Unknown || o.complete > w.invoke)
            });
            !replaced
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: usize, op: Op, outcome: Outcome, invoke: u128, complete: u128) -> Event {
        Event {
            client,
            key: "k".into(),
            op,
            outcome,
            invoke,
            complete,
        }
    }
    use Op::*;
    use Outcome::{Failed, Ok as Done, Unknown};

    #[test]
    fn a_sequential_history_is_linearizable() {
        let h = vec![
            ev(0, Read(None), Done, 0, 1),
            ev(0, Create(1), Done, 2, 3),
            ev(1, Read(Some(1)), Done, 4, 5),
            ev(0, Write(2), Done, 6, 7),
            ev(1, Read(Some(2)), Done, 8, 9),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn a_stale_read_after_a_newer_write_completed_is_not() {
        let h = vec![
            ev(0, Create(1), Done, 0, 1),
            ev(0, Write(2), Done, 2, 3),
            ev(1, Read(Some(1)), Done, 4, 5),
        ];
        let v = check(&h).unwrap_err();
        assert_eq!(v.key, "k");
        assert!(v.to_string().contains("Read(Some(1))"), "{v}");
    }

    #[test]
    fn concurrent_reads_see_either_value_but_never_go_back() {
        let mut h = vec![
            ev(0, Create(1), Done, 0, 1),
            ev(0, Write(2), Done, 2, 6),
            ev(1, Read(Some(1)), Done, 3, 4),
            ev(2, Read(Some(2)), Done, 3, 5),
        ];
        check(&h).unwrap();
        // Client 1 saw 1 after client 2 saw 2 had completed: impossible.
        h.push(ev(1, Read(Some(1)), Done, 7, 8));
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never_but_only_once() {
        let mut h = vec![
            ev(0, Create(1), Done, 0, 1),
            ev(0, Write(2), Unknown, 2, 3),
            ev(1, Read(Some(1)), Done, 10, 11),
        ];
        check(&h).unwrap();
        h.push(ev(1, Read(Some(2)), Done, 12, 13));
        check(&h).unwrap();
        h.push(ev(1, Read(Some(1)), Done, 14, 15));
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_value_from_a_failed_write_is_a_violation() {
        // What a create applied twice looks like: reported as failed, seen anyway.
        let h = vec![
            ev(0, Create(1), Done, 0, 1),
            ev(1, Write(7), Failed, 2, 3),
            ev(2, Read(Some(7)), Done, 4, 5),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_acknowledged_write_missing_at_the_end_is_lost() {
        let h = vec![
            ev(0, Create(1), Done, 0, 1),
            ev(0, Write(2), Done, 2, 3),
            ev(1, Write(3), Unknown, 1, 2),
            ev(1, Read(Some(1)), Done, 10, 11),
        ];
        assert!(check(&h).is_err());
        let finals = BTreeMap::from([("k".to_string(), Some(1))]);
        let lost = lost_writes(&h, &finals);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].op, Write(2));
        let finals = BTreeMap::from([("k".to_string(), Some(2))]);
        assert!(lost_writes(&h, &finals).is_empty());
        let finals = BTreeMap::from([("k".to_string(), None)]);
        assert_eq!(lost_writes(&h, &finals).len(), 2);
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut h = vec![
            ev(0, Create(1), Done, 0, 1),
            ev(0, Write(2), Done, 2, 3),
            ev(1, Read(Some(2)), Done, 4, 5),
        ];
        let mut other = ev(1, Read(Some(1)), Done, 6, 7);
        other.key = "j".into();
        h.push(other);
        let v = check(&h).unwrap_err();
        assert_eq!(v.key, "j");
    }
}
