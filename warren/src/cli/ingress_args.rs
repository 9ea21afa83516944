//! The command line of the ingress nouns, as clap parses it: `warren ingress ...`,
//! `warren certificate ...`, `cluster update --acme-*`, and the node flags that
//! seed or change a node's ingress. Kept apart from `args.rs` (one file per noun);
//! the spellings are a contract, see docs/cli.md.

use super::args::Format;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `--ingress` on init, join and daemon: the node runs the ingress on these ports
/// (the cluster state keeps them and wins over a later flag: `warren daemon
/// --ingress` seeds only a node without one; `warren node update --ingress`
/// changes them).
#[derive(Args, Debug, Clone, Default)]
pub struct NodeIngressArgs {
    /// Run the HTTP/HTTPS ingress on this node (init, join, or daemon for a node
    /// without one; later: `warren node update --ingress true|false`).
    #[arg(long)]
    pub ingress: bool,
    /// The ingress's plain-HTTP port (also ACME HTTP-01).
    #[arg(long, value_name = "PORT", default_value_t = 80)]
    pub ingress_http_port: u16,
    /// The ingress's HTTPS port.
    #[arg(long, value_name = "PORT", default_value_t = 443)]
    pub ingress_https_port: u16,
}

/// `warren node update --ingress true|false [--ingress-http-port P --ingress-https-port P]`.
#[derive(Args, Debug, Clone, Default)]
pub struct NodeIngressUpdateArgs {
    /// Turn the node's ingress on or off.
    #[arg(long, value_name = "BOOL")]
    pub ingress: Option<bool>,
    /// With --ingress true: its HTTP port [default: as before, or 80].
    #[arg(long, value_name = "PORT", requires = "ingress")]
    pub ingress_http_port: Option<u16>,
    /// With --ingress true: its HTTPS port [default: as before, or 443].
    #[arg(long, value_name = "PORT", requires = "ingress")]
    pub ingress_https_port: Option<u16>,
}

/// The route flags shared by create and update.
#[derive(Args, Debug, Clone, Default)]
pub struct RouteArgs {
    /// Host name, exact (shop.example.com) or wildcard (*.example.com). (`--host`
    /// is the global flag naming the manager.)
    #[arg(long = "hostname", value_name = "HOST")]
    pub hostname: Option<String>,
    /// Path prefix, matched by segments [default: /].
    #[arg(long)]
    pub path: Option<String>,
    /// The service and the port its tasks listen on: NAME[:PORT].
    #[arg(long)]
    pub service: Option<String>,
    /// The certificate for HTTPS: acme (obtained through ACME), an uploaded
    /// certificate's name, or none.
    #[arg(long, value_name = "acme|CERT_NAME|none")]
    pub tls: Option<String>,
    /// Remove the matched path prefix before forwarding.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub strip_prefix: Option<bool>,
    /// Replace the path prefix FROM with TO before forwarding ("" on update: none).
    #[arg(long, value_name = "FROM=TO")]
    pub rewrite: Option<String>,
    /// Set a request header (repeatable).
    #[arg(long, value_name = "K=V")]
    pub header_add: Vec<String>,
    /// Remove a request header (repeatable).
    #[arg(long, value_name = "K")]
    pub header_rm: Vec<String>,
    /// Answer plain HTTP with a redirect to HTTPS.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub redirect_https: Option<bool>,
    /// Requests per second per client address; beyond it, 429 (0 on update: none).
    #[arg(long, value_name = "N/s")]
    pub rate_limit: Option<String>,
    /// The burst above the rate [default: the rate].
    #[arg(long, value_name = "B")]
    pub rate_burst: Option<u64>,
    /// Only clients in this range (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<String>,
    /// Refuse clients in this range (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<String>,
    /// Keep each client on one task (a cookie).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub sticky: Option<bool>,
    /// Also answer requests no other route matches.
    #[arg(long = "default", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub default_backend: Option<bool>,
}

#[derive(Subcommand, Debug)]
pub enum IngressCmd {
    /// Create a route: host and path to a service.
    Create {
        name: String,
        #[command(flatten)]
        route: RouteArgs,
    },
    /// List routes.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a route.
    Inspect {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Change a route; flags not given keep their value. --header-add/--allow/--deny
    /// replace the lists they name.
    Update {
        name: String,
        #[command(flatten)]
        route: RouteArgs,
    },
    /// Remove routes.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertificateCmd {
    /// Upload a certificate chain (PEM) and its private key (PEM, stored sealed).
    #[command(visible_alias = "add")]
    Create {
        name: String,
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// List certificates: names, hosts, expiry.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a certificate (never its key).
    Inspect {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove certificates (refused while a route names one).
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `warren cluster update`: the cluster-wide ACME settings.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterUpdateArgs {
    /// The ACME account's contact address (turns ACME on).
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// The ACME directory [default: Let's Encrypt production].
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,
    /// PEM of a CA that signs the ACME server's HTTPS certificate (private CAs, tests).
    #[arg(long, value_name = "FILE")]
    pub acme_ca_file: Option<PathBuf>,
    /// Renew this long before expiry, e.g. 30d, 12h [default: 30d].
    #[arg(long, value_name = "DURATION")]
    pub acme_renew_before: Option<String>,
    /// Turn ACME off.
    #[arg(long, conflicts_with_all = ["acme_email", "acme_directory", "acme_ca_file", "acme_renew_before"])]
    pub acme_disable: bool,
    /// How long node certificates issued from now on last (`90d`; 5s to 5 years);
    /// every node renews at two thirds of its certificate's life.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub cert_expiry: Option<std::time::Duration>,
}
