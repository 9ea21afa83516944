//! When to order, renew, resume or give up, as a pure function of what the routes
//! want, which certificates are held, which orders are open, recent failures and
//! the time ([`plan`]). A certificate is renewed `renew_before` ahead of its
//! expiry, but never sooner than `min_age` after it was obtained (a third of its
//! lifetime unless set), so that a window longer than the certificates a CA
//! issues cannot loop on orders. A failure waits `retry_base`, doubling per
//! consecutive failure up to `retry_max`.

use std::{collections::HashMap, time::Duration};

use crate::model::ingress::{AcmeOrder, DEFAULT_RENEW_BEFORE_MS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub renew_before: Duration,
    /// None: a third of the certificate's lifetime.
    pub min_age: Option<Duration>,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            renew_before: Duration::from_millis(DEFAULT_RENEW_BEFORE_MS),
            min_age: None,
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
        }
    }
}

/// A certificate the routes ask ACME for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// `acme-<host>`.
    pub name: String,
    pub hosts: Vec<String>,
}

/// A certificate obtained earlier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    pub hosts: Vec<String>,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// When Warren stored it.
    pub obtained_ms: i64,
}

/// Consecutive failures for one certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub last_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Place a new order (no certificate yet, other hosts, or renewal due).
    Order(Wanted),
    /// Carry on with an order placed earlier (by this manager or another).
    Resume(AcmeOrder),
    /// An order for a certificate no route wants any more.
    Abandon(AcmeOrder),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub actions: Vec<Action>,
    /// The earliest time something else becomes due, if anything will.
    pub next_ms: Option<i64>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// When `held` should be renewed.
pub fn renew_at_ms(held: &Held, p: &Policy) -> i64 {
    let lifetime = (held.not_after_ms - held.not_before_ms).max(0);
    let min_age = p.min_age.map_or(lifetime / 3, ms);
    (held.not_after_ms.saturating_sub(ms(p.renew_before))).max(held.obtained_ms.saturating_add(min_age))
}

/// When the next attempt after `f` may start.
pub fn retry_at_ms(f: &Failures, p: &Policy) -> i64 {
    if f.count == 0 {
        return i64::MIN;
    }
    let factor = 2u32.saturating_pow(f.count - 1);
    let wait = p.retry_base.saturating_mul(factor).min(p.retry_max);
    f.last_ms.saturating_add(ms(wait))
}

fn same_hosts(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

pub fn plan(
    wanted: &[Wanted],
    held: &[Held],
    orders: &[AcmeOrder],
    failures: &HashMap<String, Failures>,
    now_ms: i64,
    p: &Policy,
) -> Schedule {
    let mut s = Schedule::default();
    let next = |t: i64, s: &mut Schedule| {
        if t > now_ms {
            s.next_ms = Some(s.next_ms.map_or(t, |n| n.min(t)));
        }
    };
    for w in wanted {
        let retry = failures.get(&w.name).map_or(i64::MIN, |f| retry_at_ms(f, p));
        if retry > now_ms {
            next(retry, &mut s);
            continue;
        }
        if let Some(o) = orders
            .iter()
            .find(|o| o.certificate == w.name && same_hosts(&o.hosts, &w.hosts))
        {
            s.actions.push(Action::Resume(o.clone()));
            continue;
        }
        match held.iter().find(|h| h.name == w.name && same_hosts(&h.hosts, &w.hosts)) {
            Some(h) => {
                let due = renew_at_ms(h, p);
                if due <= now_ms {
                    s.actions.push(Action::Order(w.clone()));
                } else {
                    next(due, &mut s);
                }
            }
            None => s.actions.push(Action::Order(w.clone())),
        }
    }
    for o in orders {
        let still = wanted
            .iter()
            .any(|w| w.name == o.certificate && same_hosts(&o.hosts, &w.hosts));
        if !still {
            s.actions.push(Action::Abandon(o.clone()));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    fn wanted(host: &str) -> Wanted {
        Wanted {
            name: format!("acme-{host}"),
            hosts: vec![host.into()],
        }
    }

    fn held(host: &str, obtained_ms: i64, lifetime_days: i64) -> Held {
        Held {
            name: format!("acme-{host}"),
            hosts: vec![host.into()],
            not_before_ms: obtained_ms,
            not_after_ms: obtained_ms + lifetime_days * DAY,
            obtained_ms,
        }
    }

    fn order(host: &str) -> AcmeOrder {
        AcmeOrder {
            certificate: format!("acme-{host}"),
            hosts: vec![host.into()],
            url: format!("https://ca/order/{host}"),
            started_ms: 0,
        }
    }

    #[test]
    fn a_wanted_certificate_without_one_is_ordered() {
        let s = plan(&[wanted("a.com")], &[], &[], &HashMap::new(), 0, &Policy::default());
        assert_eq!(s.actions, [Action::Order(wanted("a.com"))]);
        assert_eq!(s.next_ms, None);
    }

    #[test]
    fn renewal_is_due_thirty_days_before_expiry() {
        let p = Policy::default();
        let h = held("a.com", 0, 90);
        assert_eq!(renew_at_ms(&h, &p), 60 * DAY);
        let s = plan(
            &[wanted("a.com")],
            std::slice::from_ref(&h),
            &[],
            &HashMap::new(),
            59 * DAY,
            &p,
        );
        assert!(s.actions.is_empty());
        assert_eq!(s.next_ms, Some(60 * DAY));
        let s = plan(&[wanted("a.com")], &[h], &[], &HashMap::new(), 60 * DAY, &p);
        assert_eq!(s.actions, [Action::Order(wanted("a.com"))]);
    }

    #[test]
    fn short_lived_certificates_and_long_windows_do_not_loop() {
        // A six-day certificate with a 30-day window: renewed after two days, not at once.
        let h = held("a.com", 0, 6);
        assert_eq!(renew_at_ms(&h, &Policy::default()), 2 * DAY);
        // A forced window (tests): renew_before beyond the lifetime, a small min_age.
        let forced = Policy {
            renew_before: Duration::from_secs(100 * 365 * 86400),
            min_age: Some(Duration::from_secs(3)),
            ..Policy::default()
        };
        let h = held("a.com", 1000, 90);
        assert_eq!(renew_at_ms(&h, &forced), 4000);
    }

    #[test]
    fn open_orders_are_resumed_or_abandoned() {
        let s = plan(
            &[wanted("a.com")],
            &[],
            &[order("a.com"), order("gone.com")],
            &HashMap::new(),
            0,
            &Policy::default(),
        );
        assert_eq!(
            s.actions,
            [Action::Resume(order("a.com")), Action::Abandon(order("gone.com"))]
        );
    }

    #[test]
    fn failures_back_off_exponentially_to_a_limit() {
        let p = Policy::default();
        let f = |count| Failures { count, last_ms: 0 };
        assert_eq!(retry_at_ms(&f(1), &p), 60_000);
        assert_eq!(retry_at_ms(&f(2), &p), 120_000);
        assert_eq!(retry_at_ms(&f(5), &p), 16 * 60_000);
        assert_eq!(retry_at_ms(&f(30), &p), 6 * 3600 * 1000);
        let failures: HashMap<String, Failures> = [("acme-a.com".to_string(), f(2))].into();
        let s = plan(&[wanted("a.com")], &[], &[], &failures, 1000, &p);
        assert!(s.actions.is_empty());
        assert_eq!(s.next_ms, Some(120_000));
        let s = plan(&[wanted("a.com")], &[], &[], &failures, 120_000, &p);
        assert_eq!(s.actions, [Action::Order(wanted("a.com"))]);
    }

    #[test]
    fn a_held_certificate_for_other_hosts_is_replaced() {
        let mut h = held("a.com", 0, 90);
        h.hosts = vec!["old.com".into()];
        let s = plan(&[wanted("a.com")], &[h], &[], &HashMap::new(), DAY, &Policy::default());
        assert_eq!(s.actions, [Action::Order(wanted("a.com"))]);
    }
}
