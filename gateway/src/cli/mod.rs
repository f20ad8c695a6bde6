//! The `sluice` command line: `serve`, `migrate`, `tenant`, `key`, `s3`, `plugin`,
//! `retention`, `backup`, `config`.
//!
//! Every command that prints a result prints it for a person, or with `--json`
//! as one JSON object on stdout for scripts. Errors go to stderr with a non-zero
//! exit status.

mod backup;
mod commands;
mod limits;
mod plugins;
mod s3;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::ids::KeyRole;
use crate::plugins::PluginKind;

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "Multi-tenant storage gateway")]
pub struct Cli {
    /// Config file (TOML). `SLUICE_…` env vars override its keys.
    #[arg(long, short, global = true, env = "SLUICE_CONFIG", default_value = "/etc/sluice/sluice.toml")]
    pub config: PathBuf,
    /// Print results as one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Control-plane (and tenant template) migrations.
    #[command(subcommand)]
    Migrate(MigrateCmd),
    /// Provision, inspect and delete tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage a tenant's API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Manage a tenant's S3 access keys (the S3 door).
    #[command(subcommand)]
    S3(S3Cmd),
    /// Manage a tenant's WebAssembly plugins (policy, retention, reranker).
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Run retention plugins.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Back up, verify and restore tenants.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Check or print the configuration schema.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Override `server.http_addr`.
    #[arg(long)]
    pub http_addr: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum MigrateCmd {
    /// Apply pending migrations to the control plane and every tenant database.
    Up {
        /// Only the control plane.
        #[arg(long)]
        control_only: bool,
    },
    /// Roll back control-plane migrations (the newest one by default).
    Down {
        /// How many to roll back.
        #[arg(long, default_value_t = 1, conflicts_with = "all")]
        steps: usize,
        /// Roll back all of them (drops every control-plane table).
        #[arg(long)]
        all: bool,
    },
    /// Show which migrations are applied.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant: database, role, bucket, and an admin and a service key.
    Create { name: String },
    /// List tenants.
    List,
    /// Show a tenant, its quotas and keys.
    Show { name: String },
    /// Delete a tenant and all of its data.
    Delete {
        name: String,
        /// Required: deletion removes the tenant's database, bucket and keys for good.
        #[arg(long)]
        yes: bool,
    },
    /// Show or change a tenant's quotas (no restart needed).
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// Suspend a tenant: both doors refuse it and its open sessions end; data is kept.
    Suspend {
        name: String,
        /// Shown to the tenant's clients.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a suspended tenant.
    Resume { name: String },
    /// What a tenant stores against its storage quotas.
    Usage {
        name: String,
        /// Measure (and recount everything) now instead of showing the last measurement.
        #[arg(long)]
        measure: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum QuotaCmd {
    /// Show a tenant's quotas.
    Show { name: String },
    /// Change the quotas given as flags; the others keep their value.
    Set {
        name: String,
        #[command(flatten)]
        patch: crate::control::quotas::QuotaPatch,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Create an API key (printed once).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum, default_value_t = KeyRole::Service)]
        role: KeyRole,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a tenant's keys (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key by its prefix.
    Revoke {
        #[arg(long)]
        tenant: String,
        prefix: String,
    },
    /// Show or change a key's own rate limits (no flags: show).
    Limits {
        #[arg(long)]
        tenant: String,
        prefix: String,
        #[arg(long)]
        http_rps: Option<i32>,
        #[arg(long)]
        http_burst: Option<i32>,
        #[arg(long)]
        query_rps: Option<i32>,
        #[arg(long)]
        query_burst: Option<i32>,
        /// Remove an override (the key shares the tenant's limit again):
        /// http_rps, http_burst, query_rps or query_burst; repeatable.
        #[arg(long, value_name = "FIELD")]
        clear: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum S3Cmd {
    /// S3 access key pairs of a tenant.
    #[command(subcommand)]
    Credentials(S3CredentialsCmd),
}

#[derive(Subcommand, Debug)]
pub enum S3CredentialsCmd {
    /// Create an access key pair (the secret is printed once).
    Create {
        #[arg(long)]
        tenant: String,
        /// Reads and lists only.
        #[arg(long)]
        read_only: bool,
        /// Limit the key to object keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a tenant's access keys (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke an access key, with immediate effect.
    Revoke {
        #[arg(long)]
        tenant: String,
        access_key_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PluginCmd {
    /// Validate and store a component as a new version.
    Upload {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        kind: PluginKind,
        /// The component (`.wasm`, built for wasm32-wasip2).
        file: PathBuf,
        /// Activate it at once.
        #[arg(long)]
        activate: bool,
        /// JSON config to activate with (`--config` is the gateway's config file).
        #[arg(long, value_name = "JSON")]
        plugin_config: Option<String>,
    },
    /// List versions and the active one.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        kind: PluginKind,
    },
    /// Activate (or roll back to) a version.
    Activate {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        kind: PluginKind,
        #[arg(long)]
        version: i32,
        /// New JSON config; the current one is kept when absent.
        #[arg(long, value_name = "JSON")]
        plugin_config: Option<String>,
    },
    /// Turn a plugin kind off (versions are kept).
    Deactivate {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        kind: PluginKind,
    },
    /// Delete a version that is not active.
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        kind: PluginKind,
        #[arg(long)]
        version: i32,
    },
}

#[derive(Subcommand, Debug)]
pub enum RetentionCmd {
    /// Run the tenant's active retention plugin over its objects now.
    Run {
        #[arg(long)]
        tenant: String,
        /// Report what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show or set how often the scheduler runs the tenant's retention plugin.
    Schedule {
        #[arg(long)]
        tenant: String,
        /// Seconds between runs (0 = never, else at least 60).
        #[arg(long, conflicts_with = "default")]
        interval_s: Option<u32>,
        /// Go back to the gateway's `retention.interval_s`.
        #[arg(long)]
        default: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Back up a tenant now: database, objects, records (progress on stderr).
    Create {
        #[arg(long)]
        tenant: String,
    },
    /// List a tenant's backups, newest first (also a deleted tenant's, by
    /// its former name or id).
    List {
        #[arg(long)]
        tenant: String,
        /// Include expired and deleted ones.
        #[arg(long)]
        all: bool,
    },
    /// Show one backup and its manifest summary.
    Show { id: uuid::Uuid },
    /// Check every part, restore into a scratch database and compare.
    Verify { id: uuid::Uuid },
    /// Restore a backup in place (the tenant is fenced meanwhile) or as a new tenant.
    Restore {
        id: uuid::Uuid,
        /// Create this new tenant from the backup (new keys are printed once).
        #[arg(long = "as", value_name = "NAME")]
        as_new: Option<String>,
        /// Required for a restore in place: it replaces the tenant's data.
        #[arg(long)]
        yes: bool,
    },
    /// Delete a backup (and content no other backup uses).
    Delete {
        id: uuid::Uuid,
        /// Delete even if pinned.
        #[arg(long)]
        force: bool,
    },
    /// Pin a backup (never expires) or unpin it.
    Pin {
        id: uuid::Uuid,
        #[arg(long)]
        off: bool,
    },
    /// Deleted tenants that still have backups (restore one with `restore --as`).
    Deleted,
    /// Remove every backup of a deleted tenant now, pinned ones too, with its
    /// content and data key (otherwise they expire after `backup.retain_days`).
    Purge {
        /// The deleted tenant's former name, or its id.
        #[arg(long)]
        tenant: String,
        /// Required: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Run expiry for a tenant now (age, count, unreferenced content, dead runs).
    Expire {
        #[arg(long)]
        tenant: String,
    },
    /// Show or change a tenant's backup settings.
    Settings {
        #[arg(long)]
        tenant: String,
        /// Seconds between scheduled backups (0 = none, else at least 60).
        #[arg(long)]
        interval_s: Option<i32>,
        #[arg(long)]
        retain_days: Option<i32>,
        #[arg(long)]
        retain_min_count: Option<i32>,
        /// The tenant's own age public key(s) (`age1…`), replacing the list;
        /// `--recipient ''` clears it.
        #[arg(long = "recipient")]
        recipients: Option<Vec<String>>,
    },
    /// Print a new operator backup key (identity and public key).
    Keygen,
    /// Re-wrap every tenant's data key with the current `backup.operator_key`.
    Rewrap,
    /// Run the scheduler's pass once now (due backups, expiry, verifications).
    RunDue,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate a config file (with env overrides applied).
    Check { file: PathBuf },
    /// Print the JSON Schema of the config file.
    Schema,
}

/// Entry point of the binary.
pub fn run() -> ExitCode {
    // The plugin compile worker (see `plugins::compiler`): no config, no runtime.
    // `args_os`: a non-UTF-8 argument is clap's to report, not a panic here.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == crate::plugins::compiler::WORKER_COMMAND) {
        let rest: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
        return crate::plugins::compiler::worker_main(&rest);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::dispatch(cli));
    // Whatever is still on a blocking thread (a plugin call near its deadline,
    // a parse) does not hold the exit: `serve` has drained within its grace.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn plugin_config_is_not_the_config_file() {
        let cli = Cli::try_parse_from([
            "sluice",
            "--config",
            "gw.toml",
            "plugin",
            "activate",
            "--tenant",
            "acme",
            "--kind",
            "policy",
            "--version",
            "2",
            "--plugin-config",
            "{}",
        ])
        .expect("parses");
        assert_eq!(cli.config, PathBuf::from("gw.toml"));
        assert!(
            matches!(cli.command, Command::Plugin(PluginCmd::Activate { plugin_config: Some(ref c), .. }) if c == "{}")
        );
    }
}
