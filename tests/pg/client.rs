//! Talking to a node from a test: PostgreSQL connections (optionally from a given
//! source address), writability, and plain HTTP to the REST API.

use super::*;

pub async fn connect(conninfo: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_postgres::connect(conninfo, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| anyhow!("connect timed out"))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Like [`connect`], from local address `from` (the observer's own address, which
/// link faults leave alone).
pub async fn connect_from(
    conninfo: &str,
    from: std::net::Ipv4Addr,
) -> anyhow::Result<tokio_postgres::Client> {
    let config: tokio_postgres::Config = conninfo.parse()?;
    let host = match config.get_hosts() {
        [tokio_postgres::config::Host::Tcp(h)] => h.parse::<std::net::Ipv4Addr>()?,
        _ => anyhow::bail!("one IPv4 host expected in {conninfo:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let attempt = async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind((from, 0).into())?;
        let stream = sock.connect((host, port).into()).await?;
        stream.set_nodelay(true)?;
        Ok::<_, anyhow::Error>(config.connect_raw(stream, tokio_postgres::NoTls).await?)
    };
    let (client, conn) = tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects and runs a write that needs a primary (`txid_current()` assigns a
/// transaction id, which a standby refuses).
pub async fn is_writable(conninfo: &str) -> bool {
    is_writable_from(conninfo, None).await
}

/// [`is_writable`], connecting from local address `from` when given.
pub async fn is_writable_from(conninfo: &str, from: Option<std::net::Ipv4Addr>) -> bool {
    let attempt = async {
        let c = match from {
            Some(ip) => connect_from(conninfo, ip).await?,
            None => connect(conninfo).await?,
        };
        c.simple_query("SELECT txid_current()").await?;
        Ok::<_, anyhow::Error>(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Ok(()))
    )
}

/// One HTTP/1.1 request over a fresh connection; (status, body).
pub async fn http(host: &str, port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    request(host, port, method, path, &[], "", Duration::from_secs(3)).await
}

/// One HTTP/1.1 request with extra headers and a body (30 s: a write route may
/// wait for a restart); (status, body).
pub async fn http_with(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    request(
        host,
        port,
        method,
        path,
        headers,
        body,
        Duration::from_secs(30),
    )
    .await
}

async fn request(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad response {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok::<_, anyhow::Error>((status, body))
    };
    tokio::time::timeout(timeout, attempt).await.ok()?.ok()
}
