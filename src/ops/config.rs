//! The cluster-wide configuration (`/pg/config`) and the pause flag (`/pg/pause`)
//! as one JSON document: what `ctl show-config`/`edit-config`/`pause`/`resume` and
//! REST `GET`/`PATCH`/`PUT /config` read and write.
//!
//! The document is `config::HaSettings` in JSON plus `"pause": bool`. Where Patroni
//! has seconds (`ttl`, `loop_wait`) pgquorum's keys say their unit (`ttl_ms`,
//! `loop_wait_ms`); `parameters` and `pg_hba` are `postgresql.parameters` and
//! `postgresql.pg_hba` of Patroni's document. Writes are compare-and-set on the
//! key's mod revision, so two editors cannot overwrite each other.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;
use tonic::Code;

use super::{OpsError, cluster_view};
use crate::client::{Client, ClientError};
use crate::config::HaSettings;
use crate::ha::model;

/// The configuration as read, with the revision a write must compare against.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    pub settings: HaSettings,
    /// Mod revision of `/pg/config`.
    pub revision: u64,
    pub paused: bool,
}

impl ClusterConfig {
    /// The document shown to operators and served by `GET /config`.
    pub fn document(&self) -> Value {
        let mut doc = match serde_json::to_value(&self.settings) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        doc.insert("pause".into(), Value::Bool(self.paused));
        Value::Object(doc)
    }
}

pub async fn read(client: &Client) -> Result<ClusterConfig, OpsError> {
    let config = client.get(model::CONFIG_KEY, false, false).await?;
    let Some(kv) = config.kvs.first() else {
        return Err(OpsError::NotBootstrapped);
    };
    let settings: HaSettings = serde_json::from_slice(&kv.value).map_err(|e| {
        OpsError::Invalid(format!(
            "{} holds no valid configuration ({e}); repair it with `pgquorum ctl edit-config --apply FILE --force`",
            model::CONFIG_KEY
        ))
    })?;
    let paused = !client
        .get(model::PAUSE_KEY, false, false)
        .await?
        .kvs
        .is_empty();
    Ok(ClusterConfig {
        settings,
        revision: kv.mod_revision,
        paused,
    })
}

/// RFC 7386 JSON merge patch (what Patroni's `PATCH /config` applies): objects
/// merge key by key, `null` removes a key, anything else replaces.
pub fn merge_patch(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Value::Object(d) = doc else { return };
    for (k, v) in p {
        if v.is_null() {
            d.remove(k);
        } else {
            merge_patch(d.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// `KEY=VALUE` edits (`ctl edit-config --set`, `--pg`): `KEY` may be dotted
/// (`parameters.work_mem`); `VALUE` is JSON when it parses as JSON (numbers,
/// `true`, `null` to remove), else a string.
pub fn set_patch(sets: &[String], pg: &[String]) -> Result<Value, OpsError> {
    let mut patch = Value::Object(Map::new());
    let edits = sets
        .iter()
        .map(|s| (s.as_str(), ""))
        .chain(pg.iter().map(|s| (s.as_str(), "parameters.")));
    for (item, prefix) in edits {
        let Some((key, value)) = item.split_once('=') else {
            return Err(OpsError::Invalid(format!(
                "{item:?} is not KEY=VALUE (e.g. --set ttl_ms=3000, --pg work_mem=64MB)"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(OpsError::Invalid(format!("{item:?} has an empty key")));
        }
        // PostgreSQL parameters are strings in the document, whatever they look like.
        let value = if prefix.is_empty() {
            serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()))
        } else if value.is_empty() {
            Value::Null
        } else {
            Value::String(value.to_string())
        };
        let path = format!("{prefix}{key}");
        let mut node = &mut patch;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let Value::Object(m) = node else { break };
            if parts.peek().is_none() {
                m.insert(part.to_string(), value.clone());
                break;
            }
            node = m
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    Ok(patch)
}

/// The settings and pause flag a document asks for, or which key is wrong and why.
pub fn parse_document(doc: &Value) -> Result<(HaSettings, bool), OpsError> {
    let Value::Object(m) = doc else {
        return Err(OpsError::Invalid(
            "the configuration must be a JSON object".into(),
        ));
    };
    let mut fields = m.clone();
    let paused = match fields.remove("pause") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(OpsError::Invalid(format!(
                "pause: {other} is not true or false"
            )));
        }
    };
    // One key at a time, so the message names the key (serde's alone may not).
    for (k, v) in &fields {
        let one = Value::Object(Map::from_iter([(k.clone(), v.clone())]));
        if let Err(e) = serde_json::from_value::<HaSettings>(one) {
            return Err(OpsError::Invalid(format!("{k}: {e}")));
        }
    }
    let settings: HaSettings = serde_json::from_value(Value::Object(fields))
        .map_err(|e| OpsError::Invalid(e.to_string()))?;
    // The store applies the full rule (it knows the Raft election timeout).
    settings
        .validate(0)
        .map_err(|e| OpsError::Invalid(e.to_string()))?;
    Ok((settings, paused))
}

/// Writes `settings` if `/pg/config` is still at `revision`, and sets the pause
/// flag. Returns the configuration as it now is.
pub async fn write(
    client: &Client,
    revision: u64,
    settings: &HaSettings,
    paused: bool,
) -> Result<ClusterConfig, OpsError> {
    let current = read(client).await?;
    if current.settings != *settings {
        if revision == 0 {
            return Err(OpsError::NotBootstrapped);
        }
        let bytes = serde_json::to_vec(settings).map_err(|e| OpsError::Invalid(e.to_string()))?;
        let put = client
            .put(model::CONFIG_KEY, bytes, 0, Some(revision))
            .await
            .map_err(invalid_argument)?;
        if !put.succeeded {
            return Err(OpsError::Conflict {
                current: put.prev.map_or(0, |p| p.mod_revision),
            });
        }
    } else if current.revision != revision {
        return Err(OpsError::Conflict {
            current: current.revision,
        });
    }
    if paused != current.paused {
        set_pause(client, paused).await?;
    }
    read(client).await
}

/// A merge patch applied to the latest document, retried when another writer got
/// in between (a patch names only what it changes, so re-applying it is right).
pub async fn patch(client: &Client, patch: &Value) -> Result<ClusterConfig, OpsError> {
    let mut tries = 0;
    loop {
        let current = read(client).await?;
        let mut doc = current.document();
        merge_patch(&mut doc, patch);
        let (settings, paused) = parse_document(&doc)?;
        match write(client, current.revision, &settings, paused).await {
            Err(OpsError::Conflict { .. }) if tries < 5 => tries += 1,
            other => return other,
        }
    }
}

/// An `InvalidArgument` from the store (it validates `/pg/config` on write) is bad
/// input; anything else stays a client error.
fn invalid_argument(e: ClientError) -> OpsError {
    match &e {
        ClientError::Rpc(s) if s.code() == Code::InvalidArgument => {
            OpsError::Invalid(s.message().to_string())
        }
        _ => OpsError::Client(e),
    }
}

/// Pauses (or resumes) automatic failover and PostgreSQL start/stop by pgquorum.
pub async fn set_pause(client: &Client, on: bool) -> Result<(), OpsError> {
    if on {
        client
            .put(model::PAUSE_KEY, b"paused by an operator".to_vec(), 0, None)
            .await?;
    } else {
        client.delete(model::PAUSE_KEY, false, None).await?;
    }
    Ok(())
}

/// Waits until every member that publishes its status reports `on` as its pause
/// state (it acts on it from its next cycle).
pub async fn wait_pause(client: &Client, on: bool, timeout: Duration) -> Result<(), OpsError> {
    let started = Instant::now();
    loop {
        let view = cluster_view(client).await?;
        let behind: Vec<&str> = view
            .members
            .values()
            .filter(|m| m.paused != on)
            .map(|m| m.name.as_str())
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(OpsError::Timeout(format!(
                "{} did not report the cluster {} within {} s; the request stands (see `pgquorum ctl list -e`)",
                behind.join(", "),
                if on { "paused" } else { "resumed" },
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_and_null_removes() {
        let mut doc = json!({"ttl_ms": 2500, "parameters": {"work_mem": "4MB", "a": "1"}});
        merge_patch(
            &mut doc,
            &json!({"ttl_ms": 3000, "parameters": {"a": null, "b": "2"}}),
        );
        assert_eq!(
            doc,
            json!({"ttl_ms": 3000, "parameters": {"work_mem": "4MB", "b": "2"}})
        );
    }

    #[test]
    fn set_edits_become_a_patch() {
        let p = set_patch(
            &["ttl_ms=3000".into(), "synchronous_mode=true".into()],
            &[
                "work_mem=64MB".into(),
                "max_connections=200".into(),
                "gone=".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            p,
            json!({"ttl_ms": 3000, "synchronous_mode": true,
                   "parameters": {"work_mem": "64MB", "max_connections": "200", "gone": null}})
        );
        assert!(set_patch(&["ttl_ms".into()], &[]).is_err());
        assert!(set_patch(&["=3".into()], &[]).is_err());
    }

    #[test]
    fn a_bad_document_names_the_key() {
        let cases = [
            (json!({"ttl": 30}), "ttl: unknown field"),
            (json!({"ttl_ms": "soon"}), "ttl_ms: invalid type"),
            (json!({"pause": "yes"}), "pause:"),
            (
                json!({"loop_wait_ms": 10}),
                "ha.loop_wait_ms must be at least 50",
            ),
            (
                json!({"parameters": {"port": "1"}}),
                "port is managed by pgquorum",
            ),
            (json!([1]), "must be a JSON object"),
        ];
        for (doc, want) in cases {
            let e = parse_document(&doc).unwrap_err().to_string();
            assert!(e.contains(want), "{doc}: {e}");
        }
        let (s, paused) = parse_document(&json!({"ttl_ms": 4000, "pause": true})).unwrap();
        assert_eq!((s.ttl_ms, paused), (4000, true));
    }
}
