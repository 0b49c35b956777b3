//! `[rest_auth]`: who may use the REST API's write routes (switchover, failover,
//! restart, reload, reinitialize, config). As Patroni's `restapi.authentication`
//! (basic auth) and `restapi.allowlist`, plus a bearer token. The health checks
//! (GET, HEAD and OPTIONS) stay open so load balancers need no credentials.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestAuth {
    /// Basic auth: the user name.
    pub username: Option<String>,
    /// Basic auth: the password; prefer `password_file` or PGQUORUM_REST_PASSWORD.
    pub password: Option<String>,
    /// A file (mode 0600) whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// A file (mode 0600) whose first line is a bearer token (PGQUORUM_REST_TOKEN
    /// otherwise).
    pub token_file: Option<PathBuf>,
    /// Client networks (CIDR, e.g. "10.0.0.0/24") allowed to use the write routes;
    /// empty: any address (credentials still needed).
    #[serde(default)]
    pub allow: Vec<String>,
}

// Hand-written so that no password can reach a log line through `{:?}`.
impl std::fmt::Debug for RestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("token_file", &self.token_file)
            .field("allow", &self.allow)
            .finish()
    }
}

/// A client network: an address and how many leading bits must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network, String> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR network (e.g. 10.0.0.0/24)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Network { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            // An IPv4 client on a dual-stack socket shows up mapped into IPv6.
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        let (a, b, width) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        if self.bits == 0 {
            return true;
        }
        let shift = width - u32::from(self.bits);
        (a >> shift) == (b >> shift)
    }
}

impl RestAuth {
    pub fn validate(&self) -> Result<(), String> {
        if self.username.is_some() != (self.password.is_some() || self.password_file.is_some())
            && std::env::var_os("PGQUORUM_REST_PASSWORD").is_none()
        {
            return Err(
                "rest_auth: basic auth needs both username and password (or \
                        password_file, or PGQUORUM_REST_PASSWORD)"
                    .into(),
            );
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err("rest_auth: set password or password_file, not both".into());
        }
        for a in &self.allow {
            Network::parse(a).map_err(|e| format!("rest_auth.allow: {e}"))?;
        }
        Ok(())
    }

    pub fn networks(&self) -> Vec<Network> {
        self.allow
            .iter()
            .filter_map(|a| Network::parse(a).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let n = Network::parse("10.0.0.0/24").unwrap();
        assert!(n.contains("10.0.0.7".parse().unwrap()));
        assert!(!n.contains("10.0.1.7".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.9".parse().unwrap()));
        let one = Network::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Network::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nope").is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let a = RestAuth {
            username: Some("admin".into()),
            password: Some("s3cret-pw".into()),
            ..RestAuth::default()
        };
        let text = format!("{a:?}");
        assert!(
            !text.contains("s3cret-pw") && text.contains("redacted"),
            "{text}"
        );
    }
}
