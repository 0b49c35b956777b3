//! PostgreSQL's TLS files: copies of the node's certificate, key and the cluster CA
//! beside the data dir (owned by PostgreSQL's OS user, which it requires of a key;
//! never inside the data dir, where pg_basebackup would hand the key to replicas),
//! renewed and reloaded when the `[tls]` files change.

use std::fs;

use super::{PgError, Postgres, conf, os};

fn ssl_stamps(s: &crate::config::PgSsl) -> Vec<Option<std::time::SystemTime>> {
    [&s.ca, &s.cert, &s.key]
        .iter()
        .map(|f| fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

impl Postgres {
    /// PostgreSQL's copies of the node's certificate, key and the cluster CA, taken
    /// from the `[tls]` files at every start (so a rotated certificate reaches
    /// PostgreSQL at its next start or reload).
    pub(super) fn write_ssl_files(&self) -> Result<(), PgError> {
        let (Some(to), Some(from)) = (&self.ssl, &self.cfg.ssl) else {
            return Ok(());
        };
        let stamp = ssl_stamps(from);
        for (src, dst, mode) in [
            (&from.ca, &to.ca, 0o644),
            (&from.cert, &to.cert, 0o644),
            (&from.key, &to.key, 0o600),
        ] {
            let data = fs::read(src).map_err(PgError::io("read", src))?;
            os::write_file(dst, &data, mode, self.run_as.as_ref())
                .map_err(PgError::io("write", dst))?;
        }
        *self.ssl_stamp.lock().unwrap_or_else(|p| p.into_inner()) = Some(stamp);
        Ok(())
    }

    /// A running PostgreSQL gets a replaced certificate without a restart: the
    /// copies are renewed and the configuration reloaded (PostgreSQL re-reads its
    /// TLS files on reload). Called every probe; a stat of three files.
    pub(super) async fn refresh_ssl_if_changed(&mut self) {
        let Some(from) = self.cfg.ssl.clone() else {
            return;
        };
        let now = ssl_stamps(&from);
        let last = self
            .ssl_stamp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if last.is_none_or(|l| l == now) {
            return;
        }
        match self.write_ssl_files() {
            Ok(()) => match self.reload().await {
                Ok(()) => {
                    tracing::info!(cert = %from.cert.display(), "TLS files changed: PostgreSQL's copies renewed and its configuration reloaded")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed: copies renewed, but PostgreSQL could not be reloaded; it uses them at its next reload or start")
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but cannot be copied for PostgreSQL; it keeps the previous ones");
                // Not retried until the files change again.
                *self.ssl_stamp.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
            }
        }
    }

    /// The conninfo part that makes a connection to another member TLS.
    pub(crate) fn ssl_conninfo(&self) -> String {
        conf::ssl_conninfo(self.ssl.as_ref())
    }
}
