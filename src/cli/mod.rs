//! Command line: `pgquorum node --config FILE` runs a member; `pgquorum ctl ...`
//! talks to a running cluster over gRPC.

pub mod certs;
pub mod ctl;
pub mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::NodeConfig;

#[derive(Parser, Debug)]
#[command(
    name = "pgquorum",
    version,
    about = "PostgreSQL high availability in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a cluster member.
    Node {
        /// Node configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// `text` (colours only on a terminal) or `json` (one object per line, the HA
        /// decision's reason and actions as fields) for log shippers.
        #[arg(long, value_enum, env = "PGQUORUM_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
    /// Check a node configuration file and exit.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Administer a running cluster.
    Ctl(ctl::CtlArgs),
    /// Create the cluster CA and issue node and operator certificates.
    Certs(certs::CertsArgs),
    /// Start a local 3-node cluster with real PostgreSQL in a temporary directory
    /// (installing PostgreSQL first when run as root and it is missing); Ctrl-C stops
    /// it and removes everything.
    Demo(demo::DemoArgs),
    /// Print a shell completion script (e.g. `pgquorum completions bash >
    /// /etc/bash_completion.d/pgquorum`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of pgquorum and every subcommand, e.g.
    /// `pgquorum man > pgquorum.1 && man ./pgquorum.1`.
    Man,
    /// Internal: supervises one postmaster for `node` (see src/postgres/guard.rs).
    #[command(hide = true)]
    PgGuard {
        /// Read by the guard itself from argv.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Entry point used by `main`; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::PgGuard { .. }) {
        // Single-threaded and before any runtime exists: the guard forks the postmaster
        // and must not be starved by, or share locks with, other threads.
        return crate::postgres::guard::main();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGQUORUM_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn")
    });
    if let Command::Node { log_format, .. } = &cli.command {
        crate::node::systemd::take_env();
        init_logs(*log_format, filter);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), CliError> = rt.block_on(async move {
        match cli.command {
            Command::Node { config, .. } => {
                let cfg = NodeConfig::load(&config)?;
                let (tags_tx, tags_rx) = tokio::sync::watch::channel(cfg.tags.clone());
                let reload = tokio::spawn(reload_on_sighup(config.clone(), cfg.clone(), tags_tx));
                let r = crate::node::run(cfg, shutdown_signal(), tags_rx)
                    .await
                    .map_err(CliError::from);
                reload.abort();
                r
            }
            Command::CheckConfig { config } => {
                let cfg = NodeConfig::load(&config)?;
                println!(
                    "{}: ok (node {} of cluster {:?}, data dir {})",
                    config.display(),
                    cfg.node_id,
                    cfg.cluster_name,
                    cfg.data_dir.display()
                );
                Ok(())
            }
            Command::Ctl(args) => ctl::run(args).await.map_err(CliError::from),
            Command::Certs(args) => certs::run(args).map_err(CliError::from),
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "pgquorum", &mut std::io::stdout());
                Ok(())
            }
            Command::Man => man_pages(&mut std::io::stdout()).map_err(CliError::Output),
            Command::Demo(args) => demo::run(args, |kvs| {
                ctl::format_list("demo", &ctl::PgListing::from_kvs(kvs))
            })
            .await
            .map_err(CliError::from),
            // Handled before the runtime was built.
            Command::PgGuard { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One roff document: pgquorum(1), then a section per subcommand (recursively), so
/// `man ./pgquorum.1` shows every command and option.
fn man_pages(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    fn render(
        cmd: &clap::Command,
        name: &str,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let cmd = cmd.clone().name(name.to_owned());
        clap_mangen::Man::new(cmd.clone()).render(out)?;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            render(sub, &format!("{name}-{}", sub.get_name()), out)?;
        }
        Ok(())
    }
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    render(&cmd, "pgquorum", out)
}

/// Node logs go to stderr. Colour codes only when stderr is a terminal (and
/// `NO_COLOR` is unset): a file or journald shows them as garbage.
fn init_logs(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// What ends a command with an error: each module's own, printed once here.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error(transparent)]
    Ctl(#[from] ctl::CtlError),
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

/// SIGHUP (`systemctl reload`, `kill -HUP`) re-reads the config file: `[tags]` take
/// effect at once, anything else is reported as needing a restart, a file that does
/// not validate changes nothing. Never ends the node: a reload must not become an
/// unplanned failover.
async fn reload_on_sighup(
    path: std::path::PathBuf,
    mut running: NodeConfig,
    tags: tokio::sync::watch::Sender<crate::ha::model::Tags>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            // Without a handler SIGHUP's default action would end the process.
            tracing::error!(error = %e, "cannot handle SIGHUP; do not send it to this node");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let new = match NodeConfig::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the config file does not validate; nothing changed");
                continue;
            }
        };
        if new.tags != running.tags {
            tracing::info!(tags = ?new.tags, "SIGHUP: applied the new [tags]");
            let _ = tags.send(new.tags.clone());
            running.tags = new.tags.clone();
        }
        let restart = running.changes_needing_restart(&new);
        if restart.is_empty() {
            tracing::info!(config = %path.display(), "SIGHUP: config re-read");
        } else {
            tracing::warn!(
                changed = ?restart,
                "SIGHUP: these settings changed in the config file and take effect only after a \
                 restart of the node"
            );
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
