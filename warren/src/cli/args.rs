//! The command line, as clap parses it. The spellings here are a contract: scripts
//! and docs depend on them (see docs/cli.md).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

mod apply;
pub use apply::*;

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "Warren: a single-binary container orchestrator for the edge",
    long_about = "Warren: Docker Swarm's simplicity, Kubernetes' features, and an eBPF data plane.\n\
                  `wrn` is the same program under a shorter name."
)]
pub struct Cli {
    /// The manager to talk to: unix:///path.sock or tcp://IP:PORT.
    #[arg(
        short = 'H',
        long,
        global = true,
        env = "WARREN_HOST",
        default_value = "unix:///run/warren/warren.sock"
    )]
    pub host: String,
    /// For tcp:// hosts: a directory with ca.pem and a client certificate (node.pem and
    /// node-key.pem, as in a node's <data-dir>/certs).
    #[arg(long, global = true, env = "WARREN_TLS_DIR", default_value = "/var/lib/warren/certs")]
    pub tls_dir: PathBuf,
    /// Log format of the daemon.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable tables.
    #[default]
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, join and inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Resume the node kept in a data dir (what a systemd unit runs).
    Daemon(DaemonArgs),
    /// Manage services.
    #[command(subcommand)]
    Service(Box<ServiceCmd>),
    /// Inspect tasks.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Manage images on the nodes.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage secrets.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Manage config objects (files mounted read-only into tasks).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Create or update what Warren YAML or compose files declare.
    Apply(ApplyArgs),
    /// Deploy and manage stacks of compose files.
    #[command(subcommand)]
    Stack(StackCmd),
    /// Manage ingress routes (HTTP/HTTPS host and path routing to services).
    #[command(subcommand)]
    Ingress(super::ingress_args::IngressCmd),
    /// Manage the ingress's TLS certificates.
    #[command(subcommand)]
    Certificate(super::ingress_args::CertificateCmd),
    /// Read this node's eBPF maps directly (works with the daemon stopped).
    #[command(subcommand)]
    Dataplane(super::dataplane::DataplaneCmd),
    /// Stream changes to the cluster state as they are committed.
    Events {
        /// Only these kinds: service, task, node, secret, volume, cluster, config (repeatable).
        #[arg(long = "kind", value_enum)]
        kinds: Vec<KindArg>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Addresses and paths shared by init, join and daemon.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Where the node keeps its state.
    #[arg(long, default_value = "/var/lib/warren")]
    pub data_dir: PathBuf,
    /// Address of the cluster port (API, Raft, agents) [default: 0.0.0.0:2377].
    #[arg(long)]
    pub listen_addr: Option<SocketAddr>,
    /// Address other nodes use to reach this one [default: the listen address, or the
    /// default route's address when listening on 0.0.0.0].
    #[arg(long)]
    pub advertise_addr: Option<SocketAddr>,
    /// Root-only unix socket for the local CLI [default: /run/warren/warren.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Address of /metrics and /healthz [default: 0.0.0.0:9090].
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// The node's name [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// CPUs this node offers to tasks [default: all of the machine's].
    #[arg(long, value_name = "CPUS")]
    pub capacity_cpus: Option<String>,
    /// Memory this node offers to tasks, e.g. 2g [default: all of the machine's].
    #[arg(long, value_name = "SIZE")]
    pub capacity_memory: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub ingress: super::ingress_args::NodeIngressArgs,
}

/// How the node runs containers.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// containerd, or none for a node that runs no tasks (they stay assigned)
    /// [default: containerd].
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// containerd's socket; when nothing answers there and a containerd binary is
    /// installed, Warren runs its own under <data-dir>/containerd
    /// [default: /run/containerd/containerd.sock].
    #[arg(long)]
    pub containerd_socket: Option<std::path::PathBuf>,
    /// containerd namespace of this node's containers [default: warren].
    #[arg(long)]
    pub containerd_namespace: Option<String>,
    /// cgroup under which the containers are placed; give each node on a shared
    /// machine its own [default: /warren].
    #[arg(long)]
    pub cgroup_parent: Option<String>,
    /// The node's bridge for task interfaces [default: warren0].
    #[arg(long)]
    pub bridge: Option<String>,
    /// A registry reached over plain HTTP, HOST:PORT (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// ebpf, or none for a node without service load balancing [default: ebpf].
    #[arg(long, value_enum)]
    pub dataplane: Option<DataplaneKind>,
    /// bpffs directory of the node's pinned maps and links [default: /sys/fs/bpf/warren/<node-name>].
    #[arg(long)]
    pub bpffs: Option<std::path::PathBuf>,
    /// cgroup v2 directory whose processes get socket load balancing [default: the cgroup v2 root].
    #[arg(long)]
    pub cgroup_root: Option<std::path::PathBuf>,
    /// An interface whose traffic to published ports is translated (repeatable)
    /// [default: the interface of the advertise address].
    #[arg(long = "dataplane-iface", value_name = "IFACE")]
    pub dataplane_ifaces: Vec<String>,
    /// The WireGuard mesh's interface (wireguard overlay) [default: warren-wg].
    #[arg(long)]
    pub mesh_interface: Option<String>,
    /// The UDP port the mesh listens on; open it between nodes [default: 51820].
    #[arg(long)]
    pub mesh_port: Option<u16>,
    /// Where userspace WireGuard's control sockets go; give each node on a shared
    /// machine its own [default: /run/wireguard].
    #[arg(long)]
    pub mesh_run_dir: Option<std::path::PathBuf>,
    /// The userspace WireGuard binary, used where the kernel has no WireGuard module
    /// [default: wireguard-go].
    #[arg(long)]
    pub wireguard_go: Option<std::path::PathBuf>,
}

/// `cluster init --overlay`.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum OverlayArg {
    /// An encrypted WireGuard mesh between the nodes.
    #[default]
    Wireguard,
    /// Plain routes via the nodes' addresses (one trusted segment).
    Native,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DataplaneKind {
    Ebpf,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RuntimeKind {
    Containerd,
    None,
}

/// Timings for tests and unusual networks.
#[derive(Args, Debug, Clone)]
pub struct TuningArgs {
    /// How often agents send heartbeats.
    #[arg(long, hide = true, value_parser = humantime::parse_duration, default_value = "1s")]
    pub heartbeat_period: std::time::Duration,
    /// A node is marked down after this long without a heartbeat.
    #[arg(long, hide = true, value_parser = humantime::parse_duration, default_value = "5s")]
    pub heartbeat_grace: std::time::Duration,
    /// Take a Raft snapshot (and purge the log) every this many entries.
    #[arg(long, hide = true, default_value_t = 5000)]
    pub raft_snapshot_every: u64,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Create a new cluster with this node as its first manager (runs in the foreground).
    Init {
        #[command(flatten)]
        node: NodeArgs,
        /// The cluster CIDR; every node gets a /24 of it for its tasks.
        #[arg(long, default_value = "10.88.0.0/16")]
        pod_cidr: String,
        /// Where services' virtual IPs come from.
        #[arg(long, default_value = "10.96.0.0/16")]
        service_cidr: String,
        /// How task traffic travels between nodes; fixed for the cluster's life.
        #[arg(long, value_enum, default_value_t)]
        overlay: OverlayArg,
        /// How long node certificates last (`90d`, `720h`; 5s to 5 years; renewed at
        /// two thirds). Change it later with `cluster update --cert-expiry`.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        cert_expiry: Option<std::time::Duration>,
    },
    /// Join an existing cluster (runs in the foreground); the token decides the role.
    Join {
        #[arg(long)]
        token: String,
        #[command(flatten)]
        node: NodeArgs,
        /// A manager's address (IP:PORT).
        manager_addr: String,
    },
    /// Print (or rotate) the token and command to join as a worker or a manager.
    JoinToken {
        #[arg(value_enum)]
        role: RoleArg,
        /// Replace the token; the old one stops working.
        #[arg(long)]
        rotate: bool,
        /// Issue a new token that stops working after this long (`24h`, `30m`);
        /// the old one stops working at once.
        #[arg(long, value_parser = humantime::parse_duration)]
        expire: Option<std::time::Duration>,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Leave the cluster: stop this node's daemon and remove its containers, network,
    /// eBPF programs and maps, and data dir (local volumes with data are kept).
    /// The node stays listed as down until a manager runs `warren node rm`.
    Leave {
        /// The node's data dir.
        #[arg(long, default_value = "/var/lib/warren")]
        data_dir: std::path::PathBuf,
        /// Leave even though this node is a manager.
        #[arg(long)]
        force: bool,
    },
    /// Change cluster-wide settings (ACME for the ingress).
    Update(super::ingress_args::ClusterUpdateArgs),
    /// Show the cluster: ID, leader, Raft members, counts.
    Info {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Write a consistent snapshot of the cluster state to FILE, sealed by a passphrase
    /// (secrets stay encrypted; the key that opens them travels sealed).
    Backup {
        /// Where to write the backup (mode 0600; replaced if it exists).
        file: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Start a new single-manager cluster from a backup (runs in the foreground): the
    /// same CA, secrets and state; the old cluster's nodes are removed and their tasks
    /// placed again. Other nodes join with the tokens it prints.
    Restore {
        /// The file `warren cluster backup` wrote.
        file: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// The passphrase that seals a backup: from a file, or else from the environment.
#[derive(Args, Debug, Clone)]
pub struct PassphraseArgs {
    /// A file holding the passphrase (one trailing newline is ignored); without it,
    /// the passphrase is $WARREN_BACKUP_PASSPHRASE.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum KindArg {
    Service,
    Task,
    Node,
    Secret,
    Volume,
    Cluster,
    Config,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RoleArg {
    Worker,
    Manager,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Flags describing a service, shared by create and update.
#[derive(Args, Debug, Clone, Default)]
pub struct SpecArgs {
    /// Image to run.
    #[arg(long)]
    pub image: Option<String>,
    /// Number of tasks (replicated services; 0 is valid).
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', visible_alias = "env-add", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Placement constraint, e.g. node.labels.zone==edge (repeatable).
    #[arg(long = "constraint", visible_alias = "constraint-add", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// CPUs reserved for each task, e.g. 0.5.
    #[arg(long)]
    pub reserve_cpu: Option<String>,
    /// Memory reserved for each task, e.g. 256m.
    #[arg(long)]
    pub reserve_memory: Option<String>,
    /// CPU limit of each task.
    #[arg(long)]
    pub limit_cpu: Option<String>,
    /// Memory limit of each task.
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// Publish a port: [mode=host,]PUBLISHED:TARGET[/udp] (repeatable).
    #[arg(long = "publish", short = 'p', visible_alias = "publish-add", value_name = "PORT")]
    pub publish: Vec<String>,
    /// Service label KEY=VALUE (repeatable).
    #[arg(long = "label", visible_alias = "label-add", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Working directory in the container.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// User in the container: name, UID or UID:GID.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Mount: type=volume|bind|tmpfs,source=S,target=/PATH[,readonly] (repeatable).
    #[arg(long = "mount", visible_alias = "mount-add", value_name = "MOUNT")]
    pub mounts: Vec<String>,
    /// Give a secret to the tasks: NAME or source=NAME,target=/PATH (repeatable).
    #[arg(long = "secret", visible_alias = "secret-add", value_name = "SECRET")]
    pub secrets: Vec<String>,
    /// Health check: a command run in the container with /bin/sh -c.
    #[arg(long, conflicts_with_all = ["health_http", "health_tcp", "no_healthcheck"])]
    pub health_cmd: Option<String>,
    /// Health check: HTTP GET on [PORT]/PATH of the task (2xx or 3xx is healthy).
    #[arg(long, value_name = "[PORT]/PATH", conflicts_with_all = ["health_tcp", "no_healthcheck"])]
    pub health_http: Option<String>,
    /// Health check: a TCP connect to PORT of the task.
    #[arg(long, value_name = "PORT", conflicts_with = "no_healthcheck")]
    pub health_tcp: Option<u16>,
    /// No health check, not even the image's HEALTHCHECK.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Time between health checks [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Time a health check may take [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Consecutive failures that make a task unhealthy [default: 3].
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// Grace time after start during which failures do not count [default: 0s].
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Restart tasks that exit: none, on-failure or any [default: any].
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Delay before a restart, doubled for each consecutive one [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub restart_delay: Option<String>,
    /// Restarts of a replica before giving up; 0 is unlimited [default: 0].
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    /// Signal that stops a task [default: the image's, else SIGTERM].
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Time a task has to stop before it is killed [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub stop_grace_period: Option<String>,
    /// Time a task that is to stop waits, with no new connections, for its
    /// established connections to finish before it gets the stop signal; 0 sends
    /// the signal at once [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// vip (a virtual IP balanced by the data plane) or dnsrr (DNS round robin over
    /// the tasks) [default: vip].
    #[arg(long, value_name = "MODE")]
    pub endpoint_mode: Option<String>,
    /// any (every ready task) or prefer-local (a node's own ready tasks while it has
    /// any, then every task) for new connections to the VIP and published ports
    /// [default: any].
    #[arg(long, value_name = "LOCALITY")]
    pub endpoint_locality: Option<String>,
    /// New connections (and UDP datagrams) per second allowed per client address,
    /// e.g. 100/s; `none` removes the limit.
    #[arg(long, value_name = "N/s")]
    pub rate_limit: Option<String>,
    /// Connections a client may open at once above the rate [default: the rate].
    #[arg(long, value_name = "N")]
    pub rate_burst: Option<u32>,
    #[command(flatten)]
    pub container: ContainerArgs,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    /// How long the tasks of an unreachable node (cut off from the managers, its
    /// agent running them on its own) keep their slots before they are placed
    /// elsewhere, from the node's last contact; 0 places them at once [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub reschedule_after: Option<String>,
}

/// Swarm's container flags (issue 10, item 5), on create and update as
/// `docker service create/update` spell them.
#[derive(Args, Debug, Clone, Default)]
pub struct ContainerArgs {
    /// Host name of each task's container; "" restores the default
    /// [default: the first 12 characters of the task ID].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Replace the image's ENTRYPOINT, split into words as a shell would; ""
    /// restores the image's.
    #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Run an init process as PID 1 that forwards signals and reaps zombies (the
    /// node's tini-static or catatonit); --init=false turns it off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub init: Option<bool>,
    /// Mount the container's root filesystem read-only; --read-only=false turns it off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub read_only: Option<bool>,
    /// Add a Linux capability, e.g. NET_ADMIN, or ALL (repeatable).
    #[arg(long = "cap-add", value_name = "CAP", value_delimiter = ',')]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability, or ALL (repeatable).
    #[arg(long = "cap-drop", value_name = "CAP", value_delimiter = ',')]
    pub cap_drop: Vec<String>,
    /// A resource limit NAME=SOFT[:HARD], e.g. nofile=1024:2048 (repeatable).
    #[arg(long = "ulimit", visible_alias = "ulimit-add", value_name = "NAME=SOFT[:HARD]")]
    pub ulimits: Vec<String>,
    /// A namespaced kernel parameter KEY=VALUE: net.*, fs.mqueue.*, kernel.shm*,
    /// kernel.msg*, kernel.sem (repeatable).
    #[arg(long = "sysctl", visible_alias = "sysctl-add", value_name = "KEY=VALUE")]
    pub sysctls: Vec<String>,
    /// Maximum number of processes in each task's container; 0 is unlimited.
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<u64>,
    /// A name server for the tasks' resolv.conf, replacing Warren's resolver
    /// (repeatable, at most 3) [default: Warren's resolver on the node].
    #[arg(long = "dns", visible_alias = "dns-add", value_name = "ADDRESS")]
    pub dns: Vec<String>,
}

/// The removal flags of Swarm's container options, on update only.
#[derive(Args, Debug, Clone, Default)]
pub struct ContainerRmArgs {
    /// Replace the command's arguments (the image's CMD), split as a shell would.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Remove a ulimit by name (repeatable).
    #[arg(long, value_name = "NAME")]
    pub ulimit_rm: Vec<String>,
    /// Remove a sysctl by key (repeatable).
    #[arg(long, value_name = "KEY")]
    pub sysctl_rm: Vec<String>,
    /// Remove a name server (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub dns_rm: Vec<String>,
}

/// How a change is rolled out (`--update-*`) and rolled back (`--rollback-*`), as
/// Swarm spells them.
#[derive(Args, Debug, Clone, Default)]
pub struct RolloutArgs {
    /// Tasks replaced at once; 0 replaces all at once [default: 1].
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u64>,
    /// Wait between one batch being up and the next [default: 0s].
    #[arg(long, value_name = "DURATION")]
    pub update_delay: Option<String>,
    /// pause, continue or rollback, when too many new tasks fail [default: pause].
    #[arg(long, value_name = "ACTION")]
    pub update_failure_action: Option<String>,
    /// How long a new task's failure still counts against the update [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub update_monitor: Option<String>,
    /// Share of new tasks that may fail, 0 to 1 [default: 0].
    #[arg(long, value_name = "F")]
    pub update_max_failure_ratio: Option<f64>,
    /// start-first or stop-first [default: start-first; stop-first with a local volume].
    #[arg(long, value_name = "ORDER")]
    pub update_order: Option<String>,
    /// Tasks rolled back at once; 0 is all at once [default: 1].
    #[arg(long, value_name = "N")]
    pub rollback_parallelism: Option<u64>,
    /// Wait between rollback batches [default: 0s].
    #[arg(long, value_name = "DURATION")]
    pub rollback_delay: Option<String>,
    /// pause or continue, when too many tasks fail during a rollback [default: pause].
    #[arg(long, value_name = "ACTION")]
    pub rollback_failure_action: Option<String>,
    /// How long a task's failure counts against the rollback [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub rollback_monitor: Option<String>,
    /// Share of tasks that may fail during a rollback, 0 to 1 [default: 0].
    #[arg(long, value_name = "F")]
    pub rollback_max_failure_ratio: Option<f64>,
    /// start-first or stop-first, for the rollback.
    #[arg(long, value_name = "ORDER")]
    pub rollback_order: Option<String>,
    /// rolling, blue-green or canary: how a changed spec reaches the tasks
    /// [default: rolling; --canary-steps implies canary].
    #[arg(long, value_name = "STRATEGY")]
    pub update_strategy: Option<String>,
    /// Blue-green: how long the old version keeps running after the switch
    /// (`service promote` ends it sooner) [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub blue_green_hold: Option<String>,
    /// Canary: the weights (percent of new connections) to step through, rising,
    /// ending at 100, e.g. 10,25,50,100 [default: 10,25,50,100].
    #[arg(long, value_name = "W,W,..")]
    pub canary_steps: Option<String>,
    /// Canary: how long each step runs before its counters are judged [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub canary_interval: Option<String>,
    /// Canary: by how much (0 to 1) the canary's failed share of connections may
    /// exceed the stable version's before it is rolled back [default: 0.05].
    #[arg(long, value_name = "F")]
    pub canary_max_failure_ratio: Option<f64>,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a service: `create --name NAME IMAGE [COMMAND] [ARG...]` (Swarm's
    /// syntax) or `create NAME --image IMAGE [-- COMMAND [ARG...]]`.
    #[command(
        override_usage = "warren service create [OPTIONS] --name <NAME> <IMAGE> [COMMAND] [ARG]...\n       \
                          warren service create [OPTIONS] <NAME> --image <IMAGE> [-- <COMMAND> [ARG]...]"
    )]
    Create {
        /// The service's name; the first argument is then the image and the rest
        /// its command and arguments (replacing the image's CMD), as in Swarm.
        #[arg(long)]
        name: Option<String>,
        /// With --name: the image. Without: the service's name.
        #[arg(value_name = "NAME|IMAGE")]
        first: Option<String>,
        /// With --name: the command and its arguments (the image's CMD is replaced,
        /// its ENTRYPOINT kept). Without: the command replacing the image's
        /// ENTRYPOINT and CMD.
        #[arg(value_name = "COMMAND", trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
        #[command(flatten)]
        spec: SpecArgs,
        /// replicated (default) or global (one task per eligible node).
        #[arg(long, value_enum, default_value = "replicated")]
        mode: ModeArg,
        /// Read environment variables from a file in Docker's format, before --env
        /// (repeatable).
        #[arg(long = "env-file", value_name = "FILE")]
        env_files: Vec<PathBuf>,
        /// Print the service ID only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List services.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a service in detail.
    Inspect {
        service: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List a service's tasks.
    Ps {
        service: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Set the number of replicas: NAME=N (several allowed).
    Scale {
        #[arg(required = true, value_name = "NAME=N")]
        services: Vec<String>,
    },
    /// Change a service: the create flags add or replace; the -rm flags remove.
    Update {
        service: String,
        #[command(flatten)]
        spec: SpecArgs,
        /// Remove an environment variable by name (repeatable).
        #[arg(long, value_name = "KEY")]
        env_rm: Vec<String>,
        /// Remove a constraint (repeatable).
        #[arg(long, value_name = "EXPR")]
        constraint_rm: Vec<String>,
        /// Remove a published port by its published number (repeatable).
        #[arg(long, value_name = "PUBLISHED")]
        publish_rm: Vec<String>,
        /// Remove a service label (repeatable).
        #[arg(long, value_name = "KEY")]
        label_rm: Vec<String>,
        /// Remove a mount by its target path (repeatable).
        #[arg(long, value_name = "TARGET")]
        mount_rm: Vec<String>,
        /// Remove a secret by name (repeatable).
        #[arg(long, value_name = "NAME")]
        secret_rm: Vec<String>,
        /// Run the changed service as a canary beside the stable version, taking W%
        /// of new connections (0-100); without other changes, re-weights the canary.
        /// (A canary weighted by hand; --canary-steps lets Warren step it.)
        #[arg(long, value_name = "W", conflicts_with_all = ["canary_steps", "update_strategy"])]
        canary_weight: Option<u32>,
        #[command(flatten)]
        container_rm: ContainerRmArgs,
        /// Replace every task even if nothing changed.
        #[arg(long)]
        force: bool,
        /// Return to the previous version, with the rollback config.
        #[arg(long, conflicts_with_all = ["force", "canary_weight"])]
        rollback: bool,
        /// Return at once instead of following the rolling update.
        #[arg(short, long)]
        detach: bool,
    },
    /// Make the canary the stable version (the other tasks are replaced); ends a
    /// blue-green hold or a canary release at once.
    Promote { service: String },
    /// Drop the canary (all traffic back to the stable version), or return to the
    /// version before the last update, with the rollback config.
    Rollback {
        service: String,
        /// Return at once instead of following the rollback.
        #[arg(short, long)]
        detach: bool,
    },
    /// Remove services.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Show the output of a service's tasks.
    Logs {
        service: String,
        #[command(flatten)]
        opts: LogArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Keep printing new output.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each task.
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Show a task in detail.
    Inspect {
        task: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show the output of a task's container.
    Logs {
        task: String,
        #[command(flatten)]
        opts: LogArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Import an image archive (OCI layout tar or `docker save` tar) into the nodes'
    /// container runtimes, like `docker load`.
    Load {
        /// The archive; - reads standard input.
        file: String,
        /// Only these nodes (repeatable) [default: every ready node].
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ModeArg {
    Replicated,
    Global,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List nodes.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a node in detail.
    Inspect {
        node: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Change a node's availability or labels.
    Update {
        node: String,
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        /// Add or replace a label KEY=VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a label (repeatable).
        #[arg(long, value_name = "KEY")]
        label_rm: Vec<String>,
        /// Rotate the node's WireGuard key (wireguard overlay), without dropping
        /// traffic; returns once the rotation is asked, not done.
        #[arg(long)]
        rotate_key: bool,
        #[command(flatten)]
        ingress: super::ingress_args::NodeIngressUpdateArgs,
    },
    /// Remove nodes from the cluster.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Remove even if the node is not down.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Create a secret from a file, or from standard input with `-`.
    Create {
        name: String,
        file: String,
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List secrets (never their values).
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove secrets.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        secrets: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume.
    Create {
        name: String,
        #[arg(long, default_value = "local")]
        driver: String,
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Driver option KEY=VALUE (repeatable).
        #[arg(long = "opt", short = 'o', value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove volumes.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completion_scripts_know_the_swarm_flags_and_bash_reads_them() {
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "warren", &mut out);
        let script = String::from_utf8(out).unwrap();
        for flag in [
            "--name",
            "--env-file",
            "--cap-add",
            "--ulimit-rm",
            "--sysctl",
            "--dns-rm",
            "--init",
        ] {
            assert!(script.contains(flag), "{flag} not in the bash completion");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.bash");
        std::fs::write(&path, &script).unwrap();
        let check = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("running bash");
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        for shell in [clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "warren", &mut out);
            assert!(String::from_utf8(out).unwrap().contains("env-file"), "{shell}");
        }
    }

    #[test]
    fn documented_spellings_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ()).map_err(|e| e.to_string());
        parse(&[
            "warren",
            "cluster",
            "init",
            "--data-dir",
            "/d",
            "--listen-addr",
            "127.0.0.1:2377",
            "--advertise-addr",
            "127.0.0.1:2377",
            "--socket",
            "/s.sock",
            "--metrics-addr",
            "127.0.0.1:9090",
            "--node-name",
            "n1",
        ])
        .unwrap();
        parse(&[
            "warren",
            "cluster",
            "join",
            "--token",
            "T",
            "--data-dir",
            "/d",
            "--listen-addr",
            "127.0.0.1:2378",
            "--socket",
            "/s",
            "--metrics-addr",
            "127.0.0.1:9091",
            "--node-name",
            "n2",
            "127.0.0.1:2377",
        ])
        .unwrap();
        parse(&["warren", "daemon", "--data-dir", "/d", "--listen-addr", "127.0.0.1:1"]).unwrap();
        parse(&["warren", "cluster", "join-token", "worker", "--rotate"]).unwrap();
        parse(&["warren", "cluster", "info"]).unwrap();
        parse(&[
            "warren",
            "cluster",
            "init",
            "--pod-cidr",
            "10.0.0.0/16",
            "--service-cidr",
            "10.1.0.0/16",
        ])
        .unwrap();
        parse(&[
            "warren",
            "service",
            "update",
            "web",
            "--image",
            "x:2",
            "--canary-weight",
            "20",
        ])
        .unwrap();
        parse(&["warren", "service", "promote", "web"]).unwrap();
        parse(&["warren", "service", "rollback", "web"]).unwrap();
        parse(&[
            "warren",
            "service",
            "create",
            "web",
            "--image",
            "x",
            "--endpoint-mode",
            "dnsrr",
            "--endpoint-locality",
            "prefer-local",
            "--rate-limit",
            "50/s",
            "--rate-burst",
            "100",
        ])
        .unwrap();
        parse(&[
            "warren",
            "-H",
            "tcp://127.0.0.1:2377",
            "service",
            "create",
            "web",
            "--image",
            "img",
            "--replicas",
            "3",
            "--mode",
            "replicated",
            "--env",
            "A=1",
            "--env",
            "B=2",
            "--constraint",
            "node.labels.a==b",
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "64m",
            "--limit-cpu",
            "1",
            "--limit-memory",
            "128m",
            "--publish",
            "mode=host,8080:80/udp",
            "--publish",
            "81:80",
            "--label",
            "k=v",
        ])
        .unwrap();
        #[rustfmt::skip]
        parse(&[
            "warren", "service", "create", "db", "--image", "img", "--mount", "type=volume,source=data,target=/data",
            "--secret", "db-pass", "--secret", "source=x,target=/etc/x", "--health-http", "8080/healthz",
            "--health-interval", "2s", "--health-timeout", "1s", "--health-retries", "2", "--health-start-period", "5s",
            "--restart-condition", "on-failure", "--restart-delay", "1s", "--restart-max-attempts", "3",
            "--stop-signal", "SIGQUIT", "--stop-grace-period", "20s", "--workdir", "/srv", "--user", "1000",
        ])
        .unwrap();
        assert!(parse(&[
            "warren",
            "service",
            "create",
            "x",
            "--image",
            "i",
            "--health-cmd",
            "true",
            "--health-tcp",
            "80"
        ])
        .is_err());
        for cmd in [
            &["warren", "service", "ls", "--format", "json"][..],
            &["warren", "service", "inspect", "web", "--format", "json"],
            &["warren", "service", "ps", "web", "--format", "json"],
            &["warren", "service", "scale", "web=5"],
            &["warren", "service", "update", "web", "--image", "x", "--replicas", "2"],
            &[
                "warren",
                "service",
                "update",
                "web",
                "--mount-rm",
                "/data",
                "--secret-rm",
                "db",
                "--health-cmd",
                "true",
            ],
            &["warren", "service", "rm", "web"],
            &["warren", "node", "ls", "--format", "json"],
            &["warren", "node", "inspect", "n1", "--format", "json"],
            &[
                "warren",
                "node",
                "update",
                "n1",
                "--availability",
                "drain",
                "--label-add",
                "a=b",
                "--label-rm",
                "c",
            ],
            &["warren", "node", "rm", "n1"],
            &["warren", "secret", "create", "s", "-"],
            &["warren", "secret", "ls"],
            &["warren", "secret", "rm", "s"],
            &["warren", "volume", "create", "v", "--driver", "local"],
            &["warren", "volume", "ls"],
            &["warren", "volume", "rm", "v"],
            &["warren", "completion", "bash"],
            &["warren", "service", "logs", "web", "--follow", "--tail", "10"],
            &["warren", "task", "logs", "abc", "-n", "5"],
            &["warren", "task", "inspect", "abc", "--format", "json"],
            &["warren", "image", "load", "img.tar", "--node", "n1"],
            &[
                "warren", "events", "--kind", "service", "--kind", "node", "--format", "json",
            ],
        ] {
            parse(cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        }
        assert!(parse(&["warren", "service", "create", "web", "--replicas", "two"]).is_err());
        #[rustfmt::skip]
        parse(&[
            "warren", "service", "create", "--name", "web", "--hostname", "h", "--entrypoint", "/bin/sh -c", "--env-file", "a.env",
            "--init", "--read-only", "--cap-add", "NET_ADMIN", "--cap-drop", "ALL", "--ulimit", "nofile=1024:2048",
            "--sysctl", "net.core.somaxconn=512", "--limit-pids", "64", "--dns", "1.1.1.1",
            "--publish", "published=8080,target=80,mode=host,protocol=udp", "nginx:1", "sh", "-c", "echo hi",
        ])
        .unwrap();
        #[rustfmt::skip]
        parse(&[
            "warren", "service", "update", "web", "--init=false", "--read-only=false", "--cap-add", "SYS_TIME",
            "--ulimit-add", "nproc=10", "--ulimit-rm", "nofile", "--sysctl-add", "net.core.somaxconn=1", "--sysctl-rm", "x",
            "--dns-add", "1.1.1.1", "--dns-rm", "8.8.8.8", "--args", "-c 'sleep 1'", "--hostname", "",
        ])
        .unwrap();
        // --env-file is create's, as in Swarm.
        assert!(parse(&["warren", "service", "update", "web", "--env-file", "a.env"]).is_err());
    }
}
