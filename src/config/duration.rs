//! Durations as administrators write them: `"90s"`, `"15m"`, `"1h"`, `"24h"`, `"7d"`, or a
//! sum such as `"1h30m"`; `"250ms"` for the impatient.

use std::time::Duration;

use nom::branch::alt;
use nom::bytes::complete::tag;
use nom::character::complete::{digit1, space0};
use nom::combinator::{all_consuming, map_res};
use nom::multi::many1;
use nom::sequence::delimited;
use nom::{IResult, Parser};

fn part(input: &str) -> IResult<&str, Duration> {
    let number = map_res(digit1, str::parse::<u64>);
    let unit = alt((tag("ms"), tag("s"), tag("m"), tag("h"), tag("d")));
    map_res((number, unit), |(n, unit): (u64, &str)| {
        let seconds_per_unit = match unit {
            "ms" => return Ok(Duration::from_millis(n)),
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => 86_400,
        };
        n.checked_mul(seconds_per_unit).map(Duration::from_secs).ok_or("too large")
    })
    .parse(input)
}

/// Parses a duration string.
///
/// # Errors
/// A sentence for the configuration error when `text` is not a duration.
pub fn parse(text: &str) -> Result<Duration, &'static str> {
    let parsed = all_consuming(delimited(space0, many1(part), space0)).parse(text);
    match parsed {
        Ok((_, parts)) => {
            let total = parts.into_iter().try_fold(Duration::ZERO, Duration::checked_add);
            total.ok_or("is too large")
        }
        Err(_) => Err("is not a duration; write a number and a unit (ms, s, m, h, d), e.g. \"90s\", \"15m\", \"1h\""),
    }
}

/// Writes a duration back in the same form (for messages and the API).
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(604_800)));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "1", "h", "1x", "-5s", "1.5h", "1 h"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse("99999999999999999999d").is_err());
    }

    #[test]
    fn format_round_trips() {
        for text in ["90s", "15m", "1h", "1d", "1h30m", "250ms"] {
            let d = parse(text).unwrap();
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
    }
}
