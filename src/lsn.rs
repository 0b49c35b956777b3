//! PostgreSQL WAL positions as text (`16/B374D848`) and as the 64-bit numbers
//! pgquorum compares. Ground module: imports nothing from the crate.

/// Formats an LSN as PostgreSQL does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        for lsn in [0, 1, 0x16_B374_D848, u64::MAX] {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        for bad in ["", "16", "/1", "1/", "x/1", "1/2/3"] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }
}
