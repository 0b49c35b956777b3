//! Sizes as Patroni parses them (`?lag=16MB`).

/// Parses a size like Patroni's `parse_int(value, 'B')`: an integer (decimal,
/// `0x` hex or `0` octal, as C's `strtol`) or a decimal fraction, optionally
/// followed by one of the case-sensitive units `B`, `kB`, `MB`, `GB`, `TB`
/// (powers of 1024). Anything else is `None`.
pub fn parse_size(value: &str) -> Option<i64> {
    let value = value.trim();
    let (int, rest) = match strtol(value) {
        Some((n, rest)) => (Some(n), rest),
        None => (None, value),
    };
    let (number, unit) =
        if (int.is_none() && rest.starts_with('.')) || rest.starts_with(['.', 'e', 'E']) {
            let (f, rest) = strtod(value)?;
            (f, rest)
        } else {
            // Exact integers stay exact when there is no unit.
            let n = int?;
            if rest.trim().is_empty() {
                return Some(saturate(n));
            }
            (n as f64, rest)
        };
    let multiplier: f64 = match unit.trim() {
        "" => return Some(round_to_i64(number)),
        "B" => 1.0,
        "kB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * multiplier;
    // Patroni rounds a value in unit U to whole units of the next smaller unit.
    let granule = if multiplier > 1.0 {
        multiplier / 1024.0
    } else {
        1.0
    };
    Some(round_to_i64((bytes / granule).round_ties_even() * granule))
}

fn saturate(n: i128) -> i64 {
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

/// Python's `round` (ties to even); `as` saturates out-of-range values.
fn round_to_i64(f: f64) -> i64 {
    f.round_ties_even() as i64
}

/// C `strtol` with base 0 on the start of `s`: `[-+]?0x[0-9a-fA-F]+`,
/// `[-+]?0[0-7]*`, or `[-+]?(0|[1-9][0-9]*)`. Returns the number and the rest.
fn strtol(s: &str) -> Option<(i128, &str)> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let sign_len = s.len() - body.len();
    let (radix, start, digits_len) = if let Some(hex) = body.strip_prefix("0x") {
        let n = hex.bytes().take_while(u8::is_ascii_hexdigit).count();
        if n == 0 {
            // "0x" without digits: the octal rule matches the leading "0".
            (8, 0, 1)
        } else {
            (16, 2, n)
        }
    } else if body.starts_with('0') {
        let n = body
            .bytes()
            .take_while(|b| (b'0'..=b'7').contains(b))
            .count();
        (8, 0, n)
    } else {
        let n = body.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        (10, 0, n)
    };
    let digits = &body[start..start + digits_len];
    let mut n: i128 = 0;
    for d in digits.chars() {
        let d = i128::from(d.to_digit(radix)?);
        // Saturate: a value this large means "no limit" either way.
        n = n.saturating_mul(i128::from(radix)).saturating_add(d);
    }
    let n = if negative { -n } else { n };
    Some((n, &s[sign_len + start + digits_len..]))
}

/// C `strtod`-like prefix `[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?`.
fn strtod(s: &str) -> Option<(f64, &str)> {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let int_end = digits(i);
    let mut end = if int_end < b.len() && b[int_end] == b'.' && digits(int_end + 1) > int_end + 1 {
        digits(int_end + 1)
    } else if int_end > i {
        int_end
    } else {
        return None;
    };
    i = end;
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < b.len() && matches!(b[j], b'-' | b'+') {
            j += 1;
        }
        let exp_end = digits(j);
        if exp_end > j {
            end = exp_end;
        }
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}
