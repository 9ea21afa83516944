//! The long-running node process behind `cluster init`, `cluster restore`,
//! `cluster join` and `daemon`, in three steps (linkerd2-proxy's shape): bootstrap decides what the
//! node is (`bootstrap`: a new cluster, a join through a manager, or the node in
//! the data dir), `Config::build` does every fallible setup and returns an `App`
//! (`build`), and `App::spawn` starts its tasks and returns a `Running` node that
//! owns the shutdown (`spawn`). The listeners share one server builder and one
//! `serve` (`serve`); what the leader announces is kept by `session`. The node's
//! derived settings (runtime, data plane, network) are `config::NodeConfig`'s.

mod bootstrap;
mod build;
mod cidr;
mod error;
mod options;
mod serve;
mod session;
mod spawn;

pub use cidr::CidrError;
pub use error::{DaemonError, JoinError};
pub use options::{
    DaemonOptions, Ready, RuntimeOverrides, DEFAULT_DATA_DIR, DEFAULT_LISTEN, DEFAULT_METRICS, DEFAULT_POD_CIDR,
    DEFAULT_SOCKET,
};

use bootstrap::Boot;

/// `warren cluster init`: a new cluster with this node as its first manager.
pub async fn init(
    opts: DaemonOptions,
    pod_cidr: &str,
    service_cidr: &str,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), DaemonError> {
    let boot = bootstrap::init(&opts, pod_cidr, service_cidr)?;
    run(opts, boot, on_ready).await
}

/// `warren cluster restore`: a new single-manager cluster from a backup file
/// (`file`, sealed by `passphrase`).
pub async fn restore(
    opts: DaemonOptions,
    file: &[u8],
    passphrase: &[u8],
    on_ready: impl FnOnce(&Ready),
) -> Result<(), DaemonError> {
    let boot = bootstrap::restore(&opts, file, passphrase)?;
    run(opts, boot, on_ready).await
}

/// `warren cluster join`: join through `manager` with a token.
pub async fn join(
    opts: DaemonOptions,
    token: &str,
    manager: &str,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), DaemonError> {
    let boot = bootstrap::join(&opts, token, manager).await?;
    run(opts, boot, on_ready).await
}

/// `warren daemon`: resume the node kept in the data dir.
pub async fn resume(opts: DaemonOptions, on_ready: impl FnOnce(&Ready)) -> Result<(), DaemonError> {
    let boot = bootstrap::resume(&opts)?;
    run(opts, boot, on_ready).await
}

/// Builds and spawns the node, then runs it until SIGTERM or SIGINT.
async fn run(opts: DaemonOptions, boot: Boot, on_ready: impl FnOnce(&Ready)) -> Result<(), DaemonError> {
    let running = build::Config { opts, boot }.build().await?.spawn().await?;
    on_ready(&running.ready);
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
