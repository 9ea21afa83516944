//! The node's reserved local ports (`net.ipv4.ip_local_reserved_ports`): Warren
//! adds its SNAT source ports and every published port, so that the kernel never
//! picks one as an ephemeral port for a node socket, and takes back only what it
//! added (ports the administrator reserved stay). The plan is pure
//! ([`next`]); the sysctl is behind [`ReservedPorts`]. Whether a port is in use
//! is the tc programs' check, not this.

use std::{collections::BTreeSet, fmt::Write as _, fs::File, io, os::fd::AsFd, path::PathBuf};

use super::{sys, DataplaneError};

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Parses the sysctl's text: `a,b-c,...` (empty for none).
pub(crate) fn parse(text: &str) -> Result<BTreeSet<u16>, String> {
    let mut out = BTreeSet::new();
    for item in text.trim().split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let a: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("{item:?} is not a port or range"))?;
        let b: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("{item:?} is not a port or range"))?;
        if a > b {
            return Err(format!("{item:?} is an empty range"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// The sysctl's text for `ports`, consecutive ports as ranges.
pub(crate) fn format(ports: &BTreeSet<u16>) -> String {
    let mut out = String::new();
    let mut it = ports.iter().copied().peekable();
    while let Some(first) = it.next() {
        let mut last = first;
        while it.peek() == Some(&last.wrapping_add(1)) && last != u16::MAX {
            last = it.next().unwrap_or(last);
        }
        if !out.is_empty() {
            out.push(',');
        }
        if first == last {
            let _ = write!(out, "{first}");
        } else {
            let _ = write!(out, "{first}-{last}");
        }
    }
    out
}

/// The reserved set after Warren's ports went from `before` to `now`, given what
/// the node has reserved (`have`); `None` when nothing changes.
pub(crate) fn next(have: &BTreeSet<u16>, before: &BTreeSet<u16>, now: &BTreeSet<u16>) -> Option<BTreeSet<u16>> {
    let mut want: BTreeSet<u16> = have.difference(before).copied().collect();
    want.extend(now);
    (want != *have).then_some(want)
}

/// The sysctl of one network namespace.
pub(crate) trait ReservedPorts {
    fn read(&self) -> io::Result<String>;
    fn write(&self, text: &str) -> io::Result<()>;
}

/// `ip_local_reserved_ports` of the host network namespace (`netns`, or the
/// loader's own).
pub(crate) struct Sysctl {
    pub netns: Option<PathBuf>,
}

impl Sysctl {
    fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        match &self.netns {
            None => f(),
            // /proc/sys/net is the opening thread's namespace.
            Some(path) => {
                let ns = File::open(path)?;
                sys::in_netns(ns.as_fd(), f)?
            }
        }
    }
}

impl ReservedPorts for Sysctl {
    fn read(&self) -> io::Result<String> {
        self.run(|| std::fs::read_to_string(SYSCTL))
    }
    fn write(&self, text: &str) -> io::Result<()> {
        // An empty write is refused; a newline clears the list.
        let text = format!("{text}\n");
        self.run(move || std::fs::write(SYSCTL, text))
    }
}

/// Brings Warren's share of the reserved ports from `before` to `now`.
pub(crate) fn apply(
    sysctl: &impl ReservedPorts,
    before: &BTreeSet<u16>,
    now: &BTreeSet<u16>,
) -> Result<bool, DataplaneError> {
    let text = sysctl
        .read()
        .map_err(|e| DataplaneError::io(format!("read {SYSCTL}"), e))?;
    let have = parse(&text).map_err(|problem| DataplaneError::InvalidConfig {
        field: "net.ipv4.ip_local_reserved_ports",
        problem,
    })?;
    match next(&have, before, now) {
        None => Ok(false),
        Some(want) => {
            sysctl
                .write(&format(&want))
                .map_err(|e| DataplaneError::io(format!("write {SYSCTL}"), e))?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct Fake(RefCell<String>);

    impl ReservedPorts for Fake {
        fn read(&self) -> io::Result<String> {
            Ok(self.0.borrow().clone())
        }
        fn write(&self, text: &str) -> io::Result<()> {
            *self.0.borrow_mut() = text.to_string();
            Ok(())
        }
    }

    fn set(ports: &[u16]) -> BTreeSet<u16> {
        ports.iter().copied().collect()
    }

    #[test]
    fn the_sysctl_text_round_trips_with_ranges() {
        assert_eq!(parse("").unwrap(), set(&[]));
        assert_eq!(
            parse("8080, 61000-61002,9\n").unwrap(),
            set(&[9, 8080, 61000, 61001, 61002])
        );
        assert_eq!(
            format(&set(&[9, 8080, 61000, 61001, 61002, 65535])),
            "9,8080,61000-61002,65535"
        );
        assert_eq!(format(&set(&[65534, 65535])), "65534-65535");
        assert!(parse("5-3").is_err());
        assert!(parse("x").is_err());
    }

    #[test]
    fn only_warrens_own_ports_are_added_and_taken_back() {
        let sys = Fake(RefCell::new("22".into()));
        let snat: BTreeSet<u16> = (61000..=61003).collect();
        let mut ours = snat.clone();
        ours.insert(30080);
        assert!(apply(&sys, &set(&[]), &ours).unwrap());
        assert_eq!(*sys.0.borrow(), "22,30080,61000-61003");
        // Unchanged: no write.
        assert!(!apply(&sys, &ours, &ours).unwrap());
        // A published port goes; the administrator's 22 stays.
        assert!(apply(&sys, &ours, &snat).unwrap());
        assert_eq!(*sys.0.borrow(), "22,61000-61003");
        assert!(apply(&sys, &snat, &set(&[])).unwrap());
        assert_eq!(*sys.0.borrow(), "22");
    }
}
