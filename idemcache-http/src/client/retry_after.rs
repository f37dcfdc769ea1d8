//! `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date.
//!
//! A server answering 409, 429 or 503 may say when to come back. The
//! value is followed up to a cap ([`RetryPolicy::max_retry_after`]); a
//! value that is neither form is ignored, and the retry falls back to the
//! backoff schedule: a malformed hint must never stop a retry or make it
//! wait forever.
//!
//! HTTP-dates are accepted in the three forms RFC 9110 §5.6.7 obliges a
//! recipient to read:
//!
//! | form | example |
//! |---|---|
//! | IMF-fixdate (the one servers send) | `Sun, 06 Nov 1994 08:49:37 GMT` |
//! | obsolete RFC 850 | `Sunday, 06-Nov-94 08:49:37 GMT` |
//! | obsolete asctime | `Sun Nov  6 08:49:37 1994` |
//!
//! Names are case-sensitive, as the grammar says. The day name must be a
//! day name but is not checked against the date (it carries no
//! information the date lacks). A two-digit RFC 850 year that would be
//! more than 50 years ahead of `now` is taken from the previous century,
//! as §5.6.7 prescribes. A date in the past means "retry now".
//!
//! [`RetryPolicy::max_retry_after`]: super::RetryPolicy::max_retry_after

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// The wait a response's `Retry-After` asks for, capped at `cap`; `None`
/// when the header is absent, repeated or not a valid value (see
/// [`parse_retry_after`]).
///
/// `now` is the time the response arrived, to turn an HTTP-date into a
/// wait (the client passes `SystemTime::now()`).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, HeaderValue, header::RETRY_AFTER};
/// use idemcache_http::client::retry_after;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
/// let cap = Duration::from_secs(30);
/// assert_eq!(retry_after(&headers, SystemTime::now(), cap), Some(cap));
///
/// headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
/// assert_eq!(retry_after(&headers, SystemTime::now(), cap), None);
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime, cap: Duration) -> Option<Duration> {
    let mut values = headers.get_all(RETRY_AFTER).iter();
    let value = values.next()?;
    if values.next().is_some() {
        // A singleton field sent twice: which one the server meant is
        // unknowable.
        return None;
    }
    let wait = parse_retry_after(value.to_str().ok()?, now)?;
    Some(wait.min(cap))
}

/// One `Retry-After` value as a wait from `now`, uncapped: delta-seconds
/// (`"120"`) or an HTTP-date in any of the three forms of RFC 9110
/// §5.6.7; `None` for anything else. Surrounding whitespace is ignored. A
/// date at or before `now` gives [`Duration::ZERO`]; delta-seconds too
/// large for a `u64` saturate.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use idemcache_http::client::parse_retry_after;
///
/// // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 90);
/// assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
/// assert_eq!(
///     parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
///     Some(Duration::from_secs(90)),
/// );
/// assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now), Some(Duration::from_secs(90)));
/// assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), Some(Duration::from_secs(90)));
/// assert_eq!(parse_retry_after("-1", now), None);
/// assert_eq!(parse_retry_after("1.5", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim_matches(|c: char| c == ' ' || c == '\t');
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value
            .bytes()
            .try_fold(0u64, |n, digit| {
                n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
            })
            .unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let unix = parse_http_date(value.as_bytes(), now)?;
    let Ok(unix) = u64::try_from(unix) else {
        return Some(Duration::ZERO); // before 1970: long past
    };
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(unix))?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP-date as seconds since the Unix epoch (negative before 1970).
fn parse_http_date(s: &[u8], now: SystemTime) -> Option<i64> {
    let date = if let Some(comma) = s.iter().position(|&b| b == b',') {
        let (name, rest) = (&s[..comma], &s[comma + 1..]);
        if SHORT_DAYS.contains(&name) {
            imf_fixdate(rest)?
        } else if LONG_DAYS.contains(&name) {
            rfc850_date(rest, now)?
        } else {
            return None;
        }
    } else {
        asctime_date(s)?
    };
    date.unix_seconds()
}

const SHORT_DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
    b"Sunday",
];
const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// A calendar date and time of day, in GMT, not yet validated.
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl DateTime {
    /// Seconds since the Unix epoch; `None` for an impossible date or
    /// time. Second 60 (a leap second) is allowed, as the grammar allows.
    fn unix_seconds(&self) -> Option<i64> {
        if !(1..=12).contains(&self.month)
            || self.day == 0
            || self.day > days_in_month(self.year, self.month)
            || self.hour > 23
            || self.minute > 59
            || self.second > 60
        {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        let secs = self.hour * 3600 + self.minute * 60 + self.second;
        Some(days * 86_400 + i64::from(secs))
    }
}

/// `SP 06 SP Nov SP 1994 SP 08:49:37 SP GMT` (after `Sun,`).
fn imf_fixdate(s: &[u8]) -> Option<DateTime> {
    let [
        b' ',
        d1,
        d2,
        b' ',
        m1,
        m2,
        m3,
        b' ',
        y1,
        y2,
        y3,
        y4,
        b' ',
        time @ ..,
        b' ',
        b'G',
        b'M',
        b'T',
    ] = s
    else {
        return None;
    };
    let (hour, minute, second) = time_of_day(time)?;
    Some(DateTime {
        year: i64::from(digits(&[*y1, *y2, *y3, *y4])?),
        month: month(&[*m1, *m2, *m3])?,
        day: digits(&[*d1, *d2])?,
        hour,
        minute,
        second,
    })
}

/// `SP 06-Nov-94 SP 08:49:37 SP GMT` (after `Sunday,`).
fn rfc850_date(s: &[u8], now: SystemTime) -> Option<DateTime> {
    let [
        b' ',
        d1,
        d2,
        b'-',
        m1,
        m2,
        m3,
        b'-',
        y1,
        y2,
        b' ',
        time @ ..,
        b' ',
        b'G',
        b'M',
        b'T',
    ] = s
    else {
        return None;
    };
    let (hour, minute, second) = time_of_day(time)?;
    let two_digit = i64::from(digits(&[*y1, *y2])?);
    // RFC 9110 §5.6.7: a year more than 50 years ahead is the most recent
    // past year with the same last two digits.
    let this_year = current_year(now);
    let mut year = this_year - this_year.rem_euclid(100) + two_digit;
    if year > this_year + 50 {
        year -= 100;
    }
    Some(DateTime {
        year,
        month: month(&[*m1, *m2, *m3])?,
        day: digits(&[*d1, *d2])?,
        hour,
        minute,
        second,
    })
}

/// `Sun SP Nov SP SP6 SP 08:49:37 SP 1994` (the day as two digits, or a
/// space and one digit).
fn asctime_date(s: &[u8]) -> Option<DateTime> {
    let [
        n1,
        n2,
        n3,
        b' ',
        m1,
        m2,
        m3,
        b' ',
        d1,
        d2,
        b' ',
        time @ ..,
        b' ',
        y1,
        y2,
        y3,
        y4,
    ] = s
    else {
        return None;
    };
    if !SHORT_DAYS.contains(&&[*n1, *n2, *n3][..]) {
        return None;
    }
    let day = match (d1, d2) {
        (b' ', d) => digits(&[*d])?,
        (d1, d2) => digits(&[*d1, *d2])?,
    };
    let (hour, minute, second) = time_of_day(time)?;
    Some(DateTime {
        year: i64::from(digits(&[*y1, *y2, *y3, *y4])?),
        month: month(&[*m1, *m2, *m3])?,
        day,
        hour,
        minute,
        second,
    })
}

/// `08:49:37`, not yet range-checked.
fn time_of_day(s: &[u8]) -> Option<(u32, u32, u32)> {
    let [h1, h2, b':', m1, m2, b':', s1, s2] = s else {
        return None;
    };
    Some((
        digits(&[*h1, *h2])?,
        digits(&[*m1, *m2])?,
        digits(&[*s1, *s2])?,
    ))
}

/// ASCII digits (at most four here) as a number.
fn digits(s: &[u8]) -> Option<u32> {
    s.iter().try_fold(0u32, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

/// `Jan`..`Dec` as 1..=12.
fn month(name: &[u8]) -> Option<u32> {
    let index = MONTHS.iter().position(|&m| m == name)?;
    u32::try_from(index + 1).ok()
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * i64::from((month + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The Gregorian year `now` falls in, in GMT.
fn current_year(now: SystemTime) -> i64 {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let days = secs.div_euclid(86_400);
    // Inverse of `days_from_civil`, year only (Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let year = year_of_era + era * 400;
    if month_from_march >= 10 {
        year + 1
    } else {
        year
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_from_civil_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(1994, 11, 6), 784_111_777 / 86_400);
    }

    #[test]
    fn current_year_round_trips_around_new_year() {
        for year in [1971, 1999, 2000, 2024, 2100, 2400] {
            let first = days_from_civil(year, 1, 1) * 86_400;
            let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs as u64);
            assert_eq!(current_year(at(first)), year);
            assert_eq!(current_year(at(first - 1)), year - 1);
            assert_eq!(current_year(at(first + 200 * 86_400)), year);
        }
    }

    #[test]
    fn impossible_dates_and_times_are_rejected() {
        let now = UNIX_EPOCH;
        for bad in [
            "Sun, 30 Feb 2024 00:00:00 GMT",
            "Sun, 29 Feb 2023 00:00:00 GMT",
            "Sun, 00 Jan 2024 00:00:00 GMT",
            "Sun, 01 Jan 2024 24:00:00 GMT",
            "Sun, 01 Jan 2024 00:60:00 GMT",
            "Sun, 01 Jan 2024 00:00:61 GMT",
        ] {
            assert_eq!(parse_http_date(bad.as_bytes(), now), None, "{bad}");
        }
        assert!(parse_http_date(b"Thu, 29 Feb 2024 00:00:00 GMT", now).is_some());
        assert!(parse_http_date(b"Sat, 31 Dec 2016 23:59:60 GMT", now).is_some());
    }
}
