//! `host:port` as pgquorum writes and reads it everywhere: an IPv6 host in brackets
//! (`[::1]:5432`), anything else as it is. Ground module: imports nothing from the
//! crate.

/// `host:port`, with brackets around an IPv6 host.
pub fn join(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host:port`, `[v6]:port`, `[v6]` or a bare host. A bare IPv6 address
/// (colons, no brackets) has no port: the last group is part of the address.
pub fn split(addr: &str) -> (String, Option<u16>) {
    if let Some(rest) = addr.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        return (
            host.to_owned(),
            tail.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host.to_owned(), Some(p)),
            Err(_) => (addr.to_owned(), None),
        },
        _ => (addr.to_owned(), None),
    }
}

/// A `host:port` that must have both, the port above 0.
pub fn parse(addr: &str) -> Option<(String, u16)> {
    match split(addr) {
        (host, Some(port)) if !host.is_empty() && port > 0 => Some((host, port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_in_brackets_round_trips_and_the_rest_as_it_is() {
        for (host, port) in [
            ("::1", 5432),
            ("fe80::1%eth0", 1),
            ("10.0.0.1", 5432),
            ("db.example", 7001),
        ] {
            assert_eq!(
                parse(&join(host, port)),
                Some((host.to_string(), port)),
                "{host}"
            );
        }
        assert_eq!(join("::1", 5432), "[::1]:5432");
        assert_eq!(join("[::1]", 5432), "[::1]:5432");
        assert_eq!(join("h", 1), "h:1");
    }

    #[test]
    fn what_has_no_port_says_so() {
        assert_eq!(split("::1"), ("::1".to_string(), None));
        assert_eq!(split("[::1]"), ("::1".to_string(), None));
        assert_eq!(split("host"), ("host".to_string(), None));
        assert_eq!(split("host:x"), ("host:x".to_string(), None));
        for bad in [
            "",
            ":5432",
            "host",
            "host:0",
            "host:99999",
            "::1:5432",
            "[::1]",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
