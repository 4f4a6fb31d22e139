//! The part of a log line before the message: timestamp, host, program and process id.
//!
//! Two timestamp styles reach a Postfix log: the classic syslog one (RFC 3164,
//! `Mar  4 09:01:02`, no year and no zone — also what Postfix's own `maillog_file` writes) and
//! RFC 3339 (`2023-03-14T00:31:06.621091+01:00`, rsyslog's high-precision format). Both are
//! parsed with nom over bytes, borrowing from the line.

use nom::branch::alt;
use nom::bytes::complete::{tag, take, take_till1, take_while_m_n};
use nom::character::complete::{char, digit1};
use nom::combinator::{map_opt, opt};
use nom::{IResult, Parser};

/// When a line was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTime {
    /// RFC 3164: month (1–12), day and second of the day, in the writing host's local time;
    /// the year is the reader's to infer.
    Syslog { month: u8, day: u8, second_of_day: u32 },
    /// RFC 3339: an instant, microseconds since the Unix epoch (UTC).
    Instant { unix_micros: i64 },
}

/// The header of a line: when, where, which program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub time: LogTime,
    pub host: &'a [u8],
    /// The program as logged, e.g. `postfix/submission/smtpd` or `amavis`.
    pub program: &'a [u8],
    pub pid: Option<u32>,
}

type Res<'a, T> = IResult<&'a [u8], T>;

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

fn number<T: From<u32>>(digits: usize) -> impl Fn(&[u8]) -> Res<'_, T> {
    // At most 4 digits: no overflow. Folded directly, with no text conversion, on the path
    // every line of a log takes.
    move |input| {
        let (rest, d) = take_while_m_n(digits, digits, |b: u8| b.is_ascii_digit())(input)?;
        Ok((rest, T::from(d.iter().fold(0u32, |n, b| n * 10 + u32::from(b - b'0')))))
    }
}

/// ASCII digits as a `u32`; `None` past its range.
fn decimal(d: &[u8]) -> Option<u32> {
    d.iter().try_fold(0u32, |n, b| n.checked_mul(10)?.checked_add(u32::from(b - b'0')))
}

fn month(input: &[u8]) -> Res<'_, u8> {
    let (rest, name) = take(3usize)(input)?;
    match MONTHS.iter().position(|m| m.as_slice() == name) {
        Some(i) => Ok((rest, i as u8 + 1)),
        None => Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Tag))),
    }
}

/// `hh:mm:ss` → second of the day.
fn clock(input: &[u8]) -> Res<'_, u32> {
    let (rest, (h, _, m, _, s)) =
        (number::<u32>(2), char(':'), number::<u32>(2), char(':'), number::<u32>(2)).parse(input)?;
    if h > 23 || m > 59 || s > 60 {
        return Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Verify)));
    }
    Ok((rest, h * 3600 + m * 60 + s.min(59)))
}

/// `Mar  4 09:01:02` (the day space-padded or not). Read by position rather than through
/// combinators: every line of a classic syslog starts so, and this is the first thing read.
fn syslog_time(input: &[u8]) -> Res<'_, LogTime> {
    let fail = || nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Verify));
    let (rest, month) = month(input)?;
    let rest = rest.strip_prefix(b" ").ok_or_else(fail)?;
    let digit = |b: u8| b.is_ascii_digit().then(|| b - b'0');
    let (day, rest) = match rest {
        [b' ', d, rest @ ..] => (digit(*d).ok_or_else(fail)?, rest),
        [t, d, rest @ ..] if t.is_ascii_digit() && d.is_ascii_digit() => ((t - b'0') * 10 + (d - b'0'), rest),
        [d, rest @ ..] => (digit(*d).ok_or_else(fail)?, rest),
        [] => return Err(fail()),
    };
    let rest = rest.strip_prefix(b" ").ok_or_else(fail)?;
    let (rest, second_of_day) = clock(rest)?;
    if !(1..=31).contains(&day) {
        return Err(fail());
    }
    Ok((rest, LogTime::Syslog { month, day, second_of_day }))
}

/// `.ffffff` → microseconds (extra digits ignored, missing ones are zeros).
fn fraction(input: &[u8]) -> Res<'_, i64> {
    let (rest, digits) = nom::sequence::preceded(char('.'), digit1).parse(input)?;
    let micros = digits.iter().take(6).fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    Ok((rest, micros * 10i64.pow(6 - digits.len().min(6) as u32)))
}

/// `Z`, `+01:00` or `-0500` → seconds east of UTC.
fn zone(input: &[u8]) -> Res<'_, i64> {
    alt((
        char('Z').map(|_| 0),
        (alt((char('+'), char('-'))), number::<i64>(2), opt(char(':')), number::<i64>(2)).map(|(sign, h, _, m)| {
            let east = h * 3600 + m * 60;
            if sign == '-' { -east } else { east }
        }),
    ))
    .parse(input)
}

/// `2023-03-14T00:31:06.621091+01:00`.
fn rfc3339_time(input: &[u8]) -> Res<'_, LogTime> {
    let (rest, (year, _, month, _, day, _, second_of_day, micros, east)) = (
        number::<i64>(4),
        char('-'),
        number::<u32>(2),
        char('-'),
        number::<u32>(2),
        alt((char('T'), char(' '))),
        clock,
        opt(fraction),
        zone,
    )
        .parse(input)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Verify)));
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + i64::from(second_of_day) - east;
    Ok((rest, LogTime::Instant { unix_micros: seconds * 1_000_000 + micros.unwrap_or(0) }))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `program[pid]: ` or `program: `.
fn program(input: &[u8]) -> Res<'_, (&[u8], Option<u32>)> {
    let (rest, name) = take_till1(|b| b == b'[' || b == b':' || b == b' ')(input)?;
    let (rest, pid) = opt(nom::sequence::delimited(char('['), map_opt(digit1, decimal), char(']'))).parse(rest)?;
    let (rest, _) = tag(&b": "[..])(rest)?;
    Ok((rest, (name, pid)))
}

/// The header, and the message after it.
pub fn header(line: &[u8]) -> Option<(Header<'_>, &[u8])> {
    let (rest, time) = alt((syslog_time, rfc3339_time)).parse(line).ok()?;
    let (rest, _) = char::<_, nom::error::Error<&[u8]>>(' ').parse(rest).ok()?;
    let (rest, host) = take_till1::<_, _, nom::error::Error<&[u8]>>(|b| b == b' ')(rest).ok()?;
    let (rest, _) = char::<_, nom::error::Error<&[u8]>>(' ').parse(rest).ok()?;
    let (message, (program, pid)) = program(rest).ok()?;
    Some((Header { time, host, program, pid }, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classic_syslog_header_with_a_padded_day() {
        let (h, msg) = header(b"Jan  1 00:00:13 mail postfix/bounce[1013]: text").unwrap();
        assert_eq!(h.time, LogTime::Syslog { month: 1, day: 1, second_of_day: 13 });
        assert_eq!((h.host, h.program, h.pid), (&b"mail"[..], &b"postfix/bounce"[..], Some(1013)));
        assert_eq!(msg, b"text");
    }

    #[test]
    fn an_rfc3339_header_is_an_instant_in_utc() {
        let (h, _) = header(b"2023-03-14T00:31:06.621091+01:00 helga postfix/pickup[3]: x").unwrap();
        // 2023-03-13T23:31:06.621091Z
        assert_eq!(h.time, LogTime::Instant { unix_micros: 1_678_750_266_621_091 });
        let (z, _) = header(b"2021-02-06T10:57:57Z mail.server.com postfix/smtpd[59633]: x").unwrap();
        assert_eq!(z.time, LogTime::Instant { unix_micros: 1_612_609_077_000_000 });
    }

    #[test]
    fn broken_headers_are_refused() {
        for line in [
            &b"021-02-06T10:57:57+01:00 mail postfix/smtpd[1]: x"[..],
            b"Foo  1 00:00:13 mail postfix/smtpd[1]: x",
            b"Jan  1 25:00:13 mail postfix/smtpd[1]: x",
            b"2021-02-19T14:32:14.936091+01:00 smtp01 postfix/smtpd[58176] E89FA2DEDA: client=x",
            b"",
        ] {
            assert!(header(line).is_none(), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn the_civil_day_count_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }
}
