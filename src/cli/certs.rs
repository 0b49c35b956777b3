//! `pgquorum certs init` and `pgquorum certs issue`: the cluster's certificates in
//! two commands (see `tls/certs.rs`).

use std::path::PathBuf;

use crate::tls::{IssueRequest, Role, TlsError};

#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RoleArg {
    /// A cluster member (server and client of the others).
    Node,
    /// An operator who may change the cluster.
    Admin,
    /// An operator or monitor who may only read.
    Read,
}

#[derive(clap::Subcommand, Debug)]
enum CertsCommand {
    /// Create the cluster CA (DIR/ca.crt, DIR/ca.key; the key 0600). Keep ca.key off
    /// the database hosts once the certificates are issued.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Named in the CA certificate.
        #[arg(long, default_value = "pgquorum")]
        cluster: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (every certificate it issued stops being accepted).
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/NAME.crt and DIR/NAME.key signed by the CA in DIR. For a member,
    /// NAME is its `name` and --host every address others reach it by.
    Issue {
        name: String,
        /// A DNS name or IP address the member is reached by (repeat for each).
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, value_enum, default_value = "node")]
        role: RoleArg,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Replace an existing certificate and key of that name.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(args: CertsArgs) -> Result<(), TlsError> {
    match args.command {
        CertsCommand::Init {
            dir,
            cluster,
            days,
            force,
        } => {
            let cert = crate::tls::init_ca(&dir, &cluster, days, force)?;
            println!(
                "created the cluster CA: {} (key {}, mode 0600)",
                cert.display(),
                dir.join("ca.key").display()
            );
            println!(
                "next: `pgquorum certs issue NAME --host HOST --dir {}` for each member",
                dir.display()
            );
        }
        CertsCommand::Issue {
            name,
            hosts,
            role,
            dir,
            days,
            force,
        } => {
            let role = match role {
                RoleArg::Node => Role::Node,
                RoleArg::Admin => Role::Admin,
                RoleArg::Read => Role::Read,
            };
            if role == Role::Node && hosts.is_empty() {
                eprintln!(
                    "warning: no --host given: peers can reach {name} only by the name {name:?}; \
                     add --host for each address in its listen/advertise address"
                );
            }
            let (cert, key) = crate::tls::issue(&IssueRequest {
                dir,
                name,
                hosts,
                role,
                days,
                force,
            })?;
            println!(
                "issued {} and {} (mode 0600), role {}",
                cert.display(),
                key.display(),
                role.unit()
            );
        }
    }
    Ok(())
}
