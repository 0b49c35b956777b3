//! Reading a member's own REST API: what only the member knows between its
//! cycles (a running clone's progress), which its record in the store lags behind.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ha::health::CopyProgress;

/// A `/patroni` document is a few hundred bytes; anything far larger is not ours.
const MAX_BODY: u64 = 1 << 20;

/// `GET {api_url}{path}` as JSON; `None` when the member does not answer in
/// `timeout` or answers with something else (progress is best-effort).
pub async fn get_json(api_url: &str, path: &str, timeout: Duration) -> Option<Value> {
    let authority = api_url.strip_prefix("http://")?.trim_end_matches('/');
    tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(authority).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.take(MAX_BODY).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        // Health-check routes answer 503 with the same document; any status will do.
        if !head.starts_with("HTTP/1.")
            || head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
        {
            return None;
        }
        serde_json::from_str(body).ok()
    })
    .await
    .ok()
    .flatten()
}

/// The clone progress a member reports in `/patroni` while pg_basebackup runs.
pub async fn copy_progress(api_url: &str, timeout: Duration) -> Option<CopyProgress> {
    parse_progress(&get_json(api_url, "/patroni", timeout).await?)
}

fn parse_progress(doc: &Value) -> Option<CopyProgress> {
    let p = doc.get("progress")?;
    Some(CopyProgress {
        copied_bytes: p.get("copied_bytes")?.as_u64()?,
        total_bytes: p.get("total_bytes").and_then(Value::as_u64),
        seconds: p.get("seconds").and_then(Value::as_u64).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_is_read_from_the_patroni_document() {
        let doc = json!({"state": "creating replica",
            "progress": {"copied_bytes": 50, "total_bytes": 200, "percent": 25, "seconds": 7}});
        let p = parse_progress(&doc).unwrap();
        assert_eq!(
            (p.copied_bytes, p.total_bytes, p.seconds),
            (50, Some(200), 7)
        );
        assert_eq!(p.percent(), Some(25));
        assert_eq!(parse_progress(&json!({"state": "running"})), None);
    }

    #[tokio::test]
    async fn a_member_that_does_not_answer_http_gives_none() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.write_all(b"SSH-2.0-not-http\r\n").await;
        });
        assert_eq!(
            get_json(&url, "/patroni", Duration::from_secs(2)).await,
            None
        );
        assert_eq!(
            get_json("https://x:1", "/patroni", Duration::from_secs(2)).await,
            None
        );
    }
}
