//! The outside tools of the data-plane scenarios as text: `wrk` output and the
//! `warren-dp-probe` client reports parsed into numbers, and the HAProxy
//! configuration of the userspace-proxy variant. Pure, so it is unit-tested.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// What one `wrk --latency` run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct WrkRun {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    /// connect + read + write + timeout socket errors.
    pub socket_errors: u64,
    pub non_2xx: u64,
}

/// `236.00us`, `1.05ms`, `2.00s` → microseconds.
fn duration_us(text: &str) -> Option<f64> {
    let (num, mul) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

/// Parses the report of `wrk --latency`; the error says what was missing.
pub fn parse_wrk(out: &str) -> Result<WrkRun, String> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut socket_errors = 0;
    let mut non_2xx = 0;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = duration_us(v.trim());
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = duration_us(v.trim());
        } else if t.contains(" requests in ") {
            requests = t.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket_errors = v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    Ok(WrkRun {
        requests_per_sec: rps.ok_or("no Requests/sec line in wrk's output")?,
        p50_us: p50.ok_or("no 50% latency in wrk's output (was --latency given?)")?,
        p99_us: p99.ok_or("no 99% latency in wrk's output (was --latency given?)")?,
        requests: requests.ok_or("no request count in wrk's output")?,
        socket_errors,
        non_2xx,
    })
}

/// What one `warren-dp-probe crr` run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrrRun {
    /// Answered connections per second in the window.
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub ok: u64,
    pub attempts: u64,
    pub elapsed_s: f64,
    /// First body line (the backend address) → answers.
    pub names: BTreeMap<String, u64>,
    /// Error name → count.
    pub errors: BTreeMap<String, u64>,
}

impl CrrRun {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Share (0..=100) of the answers that came from `name`.
    pub fn share(&self, name: &str) -> Option<f64> {
        (self.ok > 0).then(|| self.names.get(name).copied().unwrap_or(0) as f64 * 100.0 / self.ok as f64)
    }
}

/// Parses `warren-dp-probe crr` output.
pub fn parse_crr(out: &str) -> Result<CrrRun, String> {
    let mut r = CrrRun::default();
    let mut seen = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["name", n, c] => {
                r.names
                    .insert((*n).to_string(), c.parse().map_err(|_| format!("bad line {line:?}"))?);
            }
            ["error", e, c] => {
                r.errors
                    .insert((*e).to_string(), c.parse().map_err(|_| format!("bad line {line:?}"))?);
            }
            [k, v] => {
                let v: f64 = v.parse().map_err(|_| format!("bad line {line:?}"))?;
                seen.insert(*k, v);
            }
            _ => {}
        }
    }
    let get = |k: &str| seen.get(k).copied().ok_or_else(|| format!("no {k} in the crr report"));
    r.rate = get("rate")?;
    r.p50_us = get("p50_us")?;
    r.p99_us = get("p99_us")?;
    r.ok = get("ok")? as u64;
    r.attempts = get("attempts")? as u64;
    r.elapsed_s = get("elapsed_us")? / 1e6;
    Ok(r)
}

/// Parses `warren-dp-probe await` output: the CLOCK_MONOTONIC nanosecond of the
/// first answer.
pub fn parse_await(out: &str) -> Result<u64, String> {
    let mut answered = None;
    let mut attempts = 0;
    let mut timed_out = false;
    for line in out.lines() {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["answered_ns", v] => answered = v.parse::<u64>().ok(),
            ["attempts", v] => attempts = v.parse().unwrap_or(0),
            ["timeout", _] => timed_out = true,
            _ => {}
        }
    }
    if timed_out {
        return Err(format!("the new service never answered ({attempts} attempts)"));
    }
    answered.ok_or_else(|| format!("no answered_ns in the poller's output: {out:?}"))
}

/// HAProxy in TCP mode, as a node-local userspace proxy: listens on `listen`,
/// balances round-robin over `servers`. Threads: HAProxy's default (one per CPU).
/// `maxconn` stays below what a 20,000-descriptor limit allows (HAProxy refuses to
/// start when it cannot raise the limit to twice maxconn); the clients hold at most 32.
pub fn haproxy_config(listen: SocketAddrV4, servers: &[SocketAddrV4]) -> String {
    let mut s = String::from(
        "global\n    maxconn 8000\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n",
    );
    s.push_str(&format!(
        "frontend bench\n    bind {listen}\n    default_backend servers\n\
         backend servers\n    balance roundrobin\n"
    ));
    for (i, a) in servers.iter().enumerate() {
        s.push_str(&format!("    server s{i} {a}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://10.230.1.2:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   254.81us  100.61us   3.05ms   85.64%
    Req/Sec    60.52k     3.21k   64.11k    80.00%
  Latency Distribution
     50%  236.00us
     75%  282.00us
     90%  348.00us
     99%    1.39ms
  120432 requests in 2.00s, 11.83MB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  60200.31
Transfer/sec:      5.91MB
";

    #[test]
    fn wrk_output_parses() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests_per_sec, 60200.31);
        assert_eq!(r.p50_us, 236.0);
        assert!((r.p99_us - 1390.0).abs() < 1e-9);
        assert_eq!(r.requests, 120432);
        assert_eq!(r.socket_errors, 7);
        assert_eq!(r.non_2xx, 5);
        // Without errors the lines are absent.
        let clean: String = WRK
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse_wrk(&clean).unwrap();
        assert_eq!((r.socket_errors, r.non_2xx), (0, 0));
    }

    #[test]
    fn wrk_units() {
        assert_eq!(duration_us("12.00us"), Some(12.0));
        assert_eq!(duration_us("1.50ms"), Some(1500.0));
        assert_eq!(duration_us("2.00s"), Some(2e6));
        assert_eq!(duration_us("1.00m"), Some(60e6));
        assert_eq!(duration_us("12"), None);
    }

    #[test]
    fn wrk_without_latency_is_an_error() {
        let text: String = WRK
            .lines()
            .filter(|l| !l.contains('%'))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = parse_wrk(&text).unwrap_err();
        assert!(e.contains("50% latency"), "{e}");
        assert!(parse_wrk("").unwrap_err().contains("Requests/sec"));
    }

    #[test]
    fn crr_report_parses() {
        let out = "name 10.230.5.2 90\nname 10.230.5.5 10\nerror ECONNREFUSED 7\nattempts 107\nok 100\n\
                   elapsed_us 1000500\nrate 99.9\np50_us 180\np99_us 900\n";
        let r = parse_crr(out).unwrap();
        assert_eq!(r.ok, 100);
        assert_eq!(r.attempts, 107);
        assert_eq!(r.rate, 99.9);
        assert_eq!((r.p50_us, r.p99_us), (180.0, 900.0));
        assert!((r.elapsed_s - 1.0005).abs() < 1e-9);
        assert_eq!(r.error_count(), 7);
        assert_eq!(r.share("10.230.5.5"), Some(10.0));
        assert_eq!(r.share("10.230.5.9"), Some(0.0));
        let e = parse_crr("ok 1\n").unwrap_err();
        assert!(e.contains("no rate"), "{e}");
        assert!(parse_crr("rate x\n").unwrap_err().contains("bad line"));
    }

    #[test]
    fn await_report_parses() {
        assert_eq!(
            parse_await("error TimedOut 3\nanswered_ns 123456789\nattempts 4\n"),
            Ok(123456789)
        );
        let e = parse_await("timeout 1\nerror TimedOut 9\nattempts 9\n").unwrap_err();
        assert!(e.contains("never answered (9 attempts)"), "{e}");
        assert!(parse_await("").is_err());
    }

    #[test]
    fn haproxy_config_balances_over_every_server() {
        let c = haproxy_config(
            "127.0.0.1:8080".parse().unwrap(),
            &["10.230.4.2:8080".parse().unwrap(), "10.230.4.3:8080".parse().unwrap()],
        );
        assert!(c.contains("mode tcp"));
        assert!(c.contains("bind 127.0.0.1:8080"));
        assert!(c.contains("server s0 10.230.4.2:8080\n"));
        assert!(c.contains("server s1 10.230.4.3:8080\n"));
        assert!(c.contains("balance roundrobin"));
    }
}
