//! `/pg/history`: every promotion, as `ctl history` and `GET /history` show it.

use serde_json::{Value, json};

use super::OpsError;
use crate::client::Client;
use crate::ha::model::{self, HistoryEntry};

pub async fn read(client: &Client) -> Result<Vec<HistoryEntry>, OpsError> {
    let resp = client.get(model::HISTORY_KEY, false, false).await?;
    let Some(kv) = resp.kvs.first() else {
        return Ok(Vec::new());
    };
    serde_json::from_slice(&kv.value).map_err(|e| {
        OpsError::Invalid(format!(
            "{} does not hold a promotion history ({e}); check that all members run the same \
             pgquorum release (`pgquorum ctl version`). The next promotion starts a new history",
            model::HISTORY_KEY
        ))
    })
}

/// Patroni's `/history` rows: `[timeline, lsn, reason, timestamp, new_leader]`.
pub fn patroni_rows(history: &[HistoryEntry]) -> Value {
    Value::Array(
        history
            .iter()
            .map(|h| {
                json!([
                    h.timeline,
                    h.lsn,
                    h.reason.to_string(),
                    utc_timestamp(h.time),
                    h.new_leader
                ])
            })
            .collect(),
    )
}

/// `secs` since the epoch as ISO 8601 in UTC (`2026-12-02T15:04:05+00:00`).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::model::Promotion;

    #[test]
    fn timestamps_are_utc_iso_8601() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(utc_timestamp(1_796_224_245), "2026-12-02T15:10:45+00:00");
    }

    #[test]
    fn rows_are_patronis() {
        let h = [HistoryEntry {
            timeline: 1,
            lsn: 25_623_960,
            reason: Promotion::Switchover,
            time: 0,
            new_leader: "n2".into(),
        }];
        assert_eq!(
            patroni_rows(&h),
            json!([[
                1,
                25_623_960,
                "switchover",
                "1970-01-01T00:00:00+00:00",
                "n2"
            ]])
        );
    }
}
