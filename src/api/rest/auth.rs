//! Authentication of the REST API's write routes (`[rest_auth]`). Every request
//! that is not GET, HEAD or OPTIONS needs, in this order: a client address in the
//! allow-list (403 otherwise), then basic auth or a bearer token that matches
//! (401 with a `WWW-Authenticate` challenge otherwise). With TLS on and no
//! `[rest_auth]`, the write routes are refused (403) rather than left open.
//! Health checks, `/patroni`, `/cluster`, `/metrics` and `GET /config` stay open,
//! as in Patroni, so load balancers and monitoring need no credentials.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::config::Network;
use crate::tls::ConnInfo;

/// What the write routes require; built once at start-up from `[rest_auth]`.
#[derive(Default)]
pub struct WriteAuth {
    /// Off: insecure = true and no `[rest_auth]`: everything open, as before.
    pub required: bool,
    pub basic: Option<(String, String)>,
    pub token: Option<String>,
    pub allow: Vec<Network>,
}

impl std::fmt::Debug for WriteAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteAuth")
            .field("required", &self.required)
            .field("basic_user", &self.basic.as_ref().map(|b| &b.0))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow", &self.allow)
            .finish()
    }
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    let mut r = Response::new(axum::body::Body::from(why));
    *r.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"pgquorum\""),
        );
    }
    r
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl WriteAuth {
    /// None when the request may go on; the refusal otherwise.
    pub fn check(
        &self,
        method: &Method,
        headers: &axum::http::HeaderMap,
        from: Option<std::net::IpAddr>,
    ) -> Option<Response> {
        if !self.required || matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        if !self.allow.is_empty()
            && !from.is_some_and(|ip| self.allow.iter().any(|n| n.contains(ip)))
        {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "this client address is not in rest_auth.allow; add its network there\n",
            ));
        }
        if self.basic.is_none() && self.token.is_none() {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "the REST write routes are off: this cluster runs TLS and the node has no \
                 [rest_auth]; set username and password_file (or token_file) there, or use \
                 `pgquorum ctl` with an admin certificate\n",
            ));
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ok = if let Some(t) = given.strip_prefix("Bearer ") {
            self.token
                .as_deref()
                .is_some_and(|want| same(t.trim(), want))
        } else if let Some(b) = given.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok());
            match (
                decoded.as_deref().and_then(|d| d.split_once(':')),
                &self.basic,
            ) {
                (Some((u, p)), Some((wu, wp))) => same(u, wu) & same(p, wp),
                _ => false,
            }
        } else {
            false
        };
        if ok {
            return None;
        }
        // Which of user, password or token was wrong is not said, nor logged.
        Some(refuse(
            StatusCode::UNAUTHORIZED,
            "this route changes the cluster and needs credentials: basic auth \
             (rest_auth.username and password) or `Authorization: Bearer TOKEN`\n",
        ))
    }
}

pub async fn guard(State(auth): State<Arc<WriteAuth>>, req: Request, next: Next) -> Response {
    let from = req.extensions().get::<ConnInfo>().map(|c| c.remote.ip());
    match auth.check(req.method(), req.headers(), from) {
        None => next.run(req).await,
        Some(refusal) => refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(header::AUTHORIZATION, format!("Basic {v}").parse().unwrap());
        h
    }

    fn auth() -> WriteAuth {
        WriteAuth {
            required: true,
            basic: Some(("admin".into(), "pw".into())),
            token: Some("tok".into()),
            allow: vec![Network::parse("10.0.0.0/24").unwrap()],
        }
    }

    const INSIDE: Option<std::net::IpAddr> =
        Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5)));

    fn code(r: Option<Response>) -> Option<u16> {
        r.map(|r| r.status().as_u16())
    }

    #[test]
    fn writes_need_credentials_from_an_allowed_address_and_reads_never_do() {
        let a = auth();
        let post = Method::POST;
        assert_eq!(code(a.check(&post, &HeaderMap::new(), INSIDE)), Some(401));
        assert_eq!(
            code(a.check(&post, &basic("admin", "nope"), INSIDE)),
            Some(401)
        );
        assert_eq!(
            code(a.check(&post, &basic("root", "pw"), INSIDE)),
            Some(401)
        );
        assert_eq!(code(a.check(&post, &basic("admin", "pw"), INSIDE)), None);
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert_eq!(code(a.check(&Method::PATCH, &bearer, INSIDE)), None);
        let outside = Some("10.0.1.5".parse().unwrap());
        assert_eq!(
            code(a.check(&post, &basic("admin", "pw"), outside)),
            Some(403)
        );
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert_eq!(code(a.check(&m, &HeaderMap::new(), outside)), None, "{m}");
        }
        let r = a.check(&Method::DELETE, &HeaderMap::new(), INSIDE).unwrap();
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn with_tls_and_no_credentials_configured_writes_are_off_and_without_tls_open() {
        let off = WriteAuth {
            required: true,
            ..WriteAuth::default()
        };
        assert_eq!(
            code(off.check(&Method::POST, &HeaderMap::new(), INSIDE)),
            Some(403)
        );
        let open = WriteAuth::default();
        assert_eq!(
            code(open.check(&Method::POST, &HeaderMap::new(), INSIDE)),
            None
        );
    }
}
