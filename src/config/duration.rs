//! Go duration strings (`300ms`, `1h45m`, `0`), the format PRODUCT.md fixes for every timeout.
//!
//! Hand-written because the format is tiny and fully specified by Go's `time.ParseDuration`,
//! and the crates that implement it are unmaintained; keeping it here lets the error say
//! exactly what was wrong.

use std::fmt::Write as _;
use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (use Go syntax such as 300ms, 30s, 5m, 1h45m)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses a Go duration string. Negative durations are rejected: no timeout can be negative.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError { input: input.to_owned(), reason };
    let s = input.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(err("negative durations are not allowed"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("empty"));
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        let (whole, frac) = match num.split_once('.') {
            Some((w, f)) => (w, f),
            None => (num, ""),
        };
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(err("malformed number"));
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| err("number too large"))? };
        let mut value = whole.checked_mul(nanos_per_unit).ok_or_else(|| err("too large"))?;
        let mut scale = nanos_per_unit;
        for digit in frac.bytes().take(18) {
            scale /= 10;
            value += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(|| err("too large"))?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Formats a duration the way Go prints it, so `/config_dump` shows what the user wrote.
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let nanos = d.as_nanos();
    if nanos < 1_000_000_000 {
        return if nanos % 1_000_000 == 0 {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let mut out = String::new();
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let sub = d.subsec_nanos();
    if sub == 0 {
        let _ = write!(out, "{s}s");
    } else {
        let frac = format!("{sub:09}");
        let _ = write!(out, "{s}.{}s", frac.trim_end_matches('0'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h45m").unwrap(), Duration::from_secs(6300));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2h3m4s5ms6us7ns").unwrap(), Duration::new(7384, 5_006_007));
        assert_eq!(parse("10µs").unwrap(), Duration::from_micros(10));
    }

    #[test]
    fn rejects_garbage_with_reason() {
        for bad in ["", "5", "5 minutes", "1x", "-1s", "1..5s", "s", ".s", "99999999999999999999h"] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("invalid duration"), "{bad}: {e}");
        }
        assert!(parse("5 minutes").unwrap_err().to_string().contains("\"5 minutes\""));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["0s", "300ms", "30s", "5m0s", "1h45m0s", "1.5s", "10us"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
