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
        /// Also issue a member's certificate at once: NAME=HOST[,HOST...] (repeat for
        /// each member), as `certs issue NAME --host HOST...` would.
        #[arg(long = "member", value_name = "NAME=HOSTS")]
        members: Vec<String>,
        /// Also issue an operator certificate with the admin role (for `ctl`).
        #[arg(long = "operator", value_name = "NAME")]
        operators: Vec<String>,
        /// Also write random passwords (mode 0600) for the PostgreSQL superuser and
        /// replication users and the REST write routes: DIR/superuser.password,
        /// DIR/replication.password, DIR/rest.password, the same for every host.
        #[arg(long)]
        passwords: bool,
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
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: u32,
        /// Replace an existing certificate and key of that name.
        #[arg(long)]
        force: bool,
    },
}

const PASSWORD_FILES: [&str; 3] = [
    "superuser.password",
    "replication.password",
    "rest.password",
];

/// 32 characters from the kernel's random source (192 bits), printable so that it
/// can be typed into psql or curl.
fn random_password() -> Result<String, TlsError> {
    use std::io::Read;
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|source| TlsError::Read {
            path: "/dev/urandom".into(),
            source,
        })?;
    use base64::Engine;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// What browsers accept for a server certificate; renew well before (a node warns
/// from 30 days out).
const DEFAULT_DAYS: u32 = 825;

pub fn run(args: CertsArgs) -> Result<(), TlsError> {
    match args.command {
        CertsCommand::Init {
            dir,
            cluster,
            days,
            force,
            members,
            operators,
            passwords,
        } => {
            // All arguments checked before anything is written.
            let mut requests = Vec::new();
            for m in &members {
                let Some((name, hosts)) = m
                    .split_once('=')
                    .filter(|(n, h)| !n.is_empty() && !h.is_empty())
                else {
                    return Err(TlsError::Cert(format!(
                        "--member {m:?}: write NAME=HOST[,HOST...], e.g. --member pg1=10.0.0.11"
                    )));
                };
                requests.push(IssueRequest {
                    dir: dir.clone(),
                    name: name.to_owned(),
                    hosts: hosts.split(',').map(|h| h.trim().to_owned()).collect(),
                    role: Role::Node,
                    days: DEFAULT_DAYS,
                    force,
                });
            }
            for o in &operators {
                requests.push(IssueRequest {
                    dir: dir.clone(),
                    name: o.clone(),
                    hosts: Vec::new(),
                    role: Role::Admin,
                    days: DEFAULT_DAYS,
                    force,
                });
            }
            let mut planned: Vec<PathBuf> = requests
                .iter()
                .flat_map(|r| [".crt", ".key"].map(|e| dir.join(format!("{}{e}", r.name))))
                .collect();
            if passwords {
                planned.extend(PASSWORD_FILES.iter().map(|f| dir.join(f)));
            }
            if let Some(p) = planned.into_iter().find(|p| p.exists() && !force) {
                return Err(TlsError::Exists { path: p });
            }
            let cert = crate::tls::init_ca(&dir, &cluster, days, force)?;
            println!(
                "created the cluster CA: {} (key {}, mode 0600)",
                cert.display(),
                dir.join("ca.key").display()
            );
            for r in &requests {
                let (c, k) = crate::tls::issue(r)?;
                println!(
                    "issued {} and {} (mode 0600), role {}",
                    c.display(),
                    k.display(),
                    r.role.unit()
                );
            }
            if passwords {
                for f in PASSWORD_FILES {
                    let p = dir.join(f);
                    crate::tls::write_secret(&p, &random_password()?)?;
                    println!("wrote {} (mode 0600)", p.display());
                }
            }
            if requests.is_empty() {
                println!(
                    "next: `pgquorum certs issue NAME --host HOST --dir {}` for each member",
                    dir.display()
                );
            }
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
