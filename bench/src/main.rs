//! `warren-bench`: runs the benchmark scenarios (usually through `cargo xtask
//! bench`), then writes `bench/results/latest.json`, a dated copy, and
//! `docs/benchmarks.md` with its charts.
//!
//! ```text
//! warren-bench --warren target/release/warren [--quick] [--only PREFIX]...
//! ```

mod control;
mod report;
mod stats;
mod worker;

use report::{Machine, Results};
use std::collections::BTreeMap;
use std::path::PathBuf;

struct Args {
    warren: PathBuf,
    quick: bool,
    only: Vec<String>,
    results_dir: PathBuf,
    docs: PathBuf,
    commit: String,
}

fn parse_args() -> Result<Args, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        warren: root.join("target/release/warren"),
        quick: false,
        only: vec![],
        results_dir: root.join("bench/results"),
        docs: root.join("docs/benchmarks.md"),
        commit: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--only" => a.only.push(value("--only")?),
            "--warren" => a.warren = PathBuf::from(value("--warren")?),
            "--results-dir" => a.results_dir = PathBuf::from(value("--results-dir")?),
            "--docs" => a.docs = PathBuf::from(value("--docs")?),
            "--commit" => a.commit = value("--commit")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !a.warren.exists() {
        return Err(format!(
            "the warren binary is missing at {}: build it with `cargo build --release -p warren`",
            a.warren.display()
        ));
    }
    Ok(a)
}

const SCENARIOS: &[(&str, &str)] = &[
    (
        "control.failover",
        "Three managers as separate processes on 127.0.0.1. A client connected to a follower's socket \
         kills the leader with SIGKILL and retries CreateService until one succeeds; the time from the \
         kill to that success is one run. The killed manager is restarted between runs; the first kill \
         is a warm-up and is not counted.",
    ),
    (
        "control.create",
        "The same three managers. CreateService calls (replicas 0) over the local unix socket: 16 \
         concurrent clients on the leader, 16 on a follower (writes forwarded to the leader), and one \
         client calling sequentially. Each run creates a fresh batch of services.",
    ),
    (
        "control.api",
        "ListServices over the leader's unix socket, one client, sequential calls, with 1,000 or more \
         services present; percentiles per run of 200 (quick) or 1,000 calls after 50 warm-up calls.",
    ),
    (
        "control.schedule",
        "A manager and a worker, each in its own network namespace, with a private containerd; the \
         image is loaded once with `warren image load` and warmed up with one container. A service \
         pinned to the worker is created with 1, 10 or 50 replicas and the time until every task \
         reports running is measured through the API (polling every 10 ms); the service is removed \
         between runs.",
    ),
    (
        "footprint",
        "Size of the stripped release binary; resident memory (VmRSS) of a fresh single-node manager \
                  after 3 s idle, of the three-manager leader once 1,000 or more services exist, and of a \
         worker running 50 tasks (see control.schedule).",
    ),
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("warren-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The harness starts `warren` from WARREN_BIN.
    std::env::set_var("WARREN_BIN", &args.warren);
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| s.starts_with(o.as_str()));
    let mut records = Vec::new();
    let mut methods = BTreeMap::new();
    let mut baselines = BTreeMap::new();
    for (name, method) in SCENARIOS {
        if wanted(name) {
            methods.insert(name.to_string(), method.to_string());
        }
    }
    if wanted("control.failover") {
        eprintln!("warren-bench: control.failover");
        records.extend(control::failover(args.quick).await);
    }
    if wanted("control.create") || wanted("control.api") || wanted("footprint") {
        eprintln!("warren-bench: control.create, control.api");
        let r = control::create_and_api(args.quick).await;
        records.extend(r.into_iter().filter(|r| wanted(&r.scenario)));
    }
    if wanted("footprint") {
        eprintln!("warren-bench: footprint");
        records.extend(control::footprint(&args.warren).await);
    }
    if wanted("control.schedule") || wanted("footprint") {
        eprintln!("warren-bench: control.schedule");
        let r = worker::schedule(args.quick).await;
        records.extend(r.into_iter().filter(|r| wanted(&r.scenario)));
    }
    baselines.insert("control.create".to_string(), "16 clients, leader".to_string());
    baselines.retain(|k, _| methods.contains_key(k));
    // Keep the scenarios in the documented order.
    let order = |s: &str| SCENARIOS.iter().position(|(n, _)| *n == s).unwrap_or(usize::MAX);
    records.sort_by_key(|r| order(&r.scenario));
    let results = Results {
        machine: Machine::detect(args.quick, env!("CARGO_PKG_VERSION"), &args.commit),
        records,
        methods,
        baselines,
    };
    if let Err(e) = report::write_json(&results, &args.results_dir) {
        eprintln!("warren-bench: writing results: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if let Err(e) = report::write_markdown(&results, &args.docs) {
        eprintln!("warren-bench: writing {}: {e}", args.docs.display());
        return std::process::ExitCode::FAILURE;
    }
    for r in &results.records {
        match (&r.skipped, r.median) {
            (Some(why), _) => println!(
                "{:<18} {:<34} {:<26} not measured: {why}",
                r.scenario, r.variant, r.metric
            ),
            (None, Some(m)) => println!(
                "{:<18} {:<34} {:<26} {:>10.2} {} (min {:.2}, max {:.2}, {} runs)",
                r.scenario,
                r.variant,
                r.metric,
                m,
                r.unit,
                r.min.unwrap_or(m),
                r.max.unwrap_or(m),
                r.runs.len()
            ),
            (None, None) => println!("{:<18} {:<34} {:<26} no data", r.scenario, r.variant, r.metric),
        }
    }
    std::process::ExitCode::SUCCESS
}
