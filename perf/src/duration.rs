//! Durations on the command line: `10s`, `500ms`, `2m`, or plain seconds.

use std::time::Duration;

/// Longest duration taken, in seconds (about 31 years).
const MAX_SECONDS: f64 = 1e9;

/// Parse `N`, `Ns`, `Nms`, `Nm` (N may have a fraction).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale < MAX_SECONDS => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        Ok(v) if v.is_finite() && v >= 0.0 => Err(format!(
            "{s:?} is too long (at most {MAX_SECONDS:e} seconds)"
        )),
        _ => Err(format!("{s:?} is not a duration (like 10s, 500ms, 2m)")),
    }
}

/// Like [`parse_duration`], but zero is an error (a measured time of nothing).
pub fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} is zero; give a time longer than that")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "-1s", "1h", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_nonzero_duration("0s").is_err());
        assert!(parse_duration("1000000000s")
            .expect_err("too long")
            .contains("too long"));
        assert_eq!(parse_nonzero_duration("1ms"), Ok(Duration::from_millis(1)));
    }
}
