//! The declarations of `warren apply`, `warren stack ...` and `warren config ...`
//! (issue 14), kept apart from `args.rs`, which holds every other noun.

use super::Format;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// What `apply -f` and `stack deploy` share: how to show the diff and what to do.
#[derive(Args, Debug, Clone)]
pub struct ApplyOpts {
    /// Print the diff and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove what the stack (for `apply -f`: what earlier applies created) no longer names.
    #[arg(long)]
    pub prune: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// A Warren YAML or compose file, a directory of them, or `-` for standard input (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub opts: ApplyOpts,
}

#[derive(Subcommand, Debug)]
pub enum StackCmd {
    /// Deploy (or update) a stack from compose files; later files override earlier ones.
    #[command(visible_alias = "up")]
    Deploy {
        #[arg(short = 'c', long = "compose-file", value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        name: String,
        #[command(flatten)]
        opts: ApplyOpts,
    },
    /// List stacks.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List a stack's services.
    Services {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a stack's tasks.
    Ps {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a stack: its services, secrets and configs (volumes are kept).
    #[command(visible_alias = "remove", visible_alias = "down")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Create a config from a file, or from standard input with `-`.
    Create {
        name: String,
        file: String,
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List configs.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove configs (refused while a service uses one).
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        configs: Vec<String>,
    },
}
