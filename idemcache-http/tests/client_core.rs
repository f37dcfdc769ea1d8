//! The client's transport-free core, without a network: the classification
//! table, the backoff schedule, `Retry-After` parsing and the policy's
//! validation.

#![cfg(feature = "reqwest")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode, header::RETRY_AFTER};
use idemcache_http::client::{
    Backoff, Classification, Decision, Outcome, PolicyError, Reason, RetryPolicy,
    parse_retry_after, retry_after,
};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

// Classification ----------------------------------------------------------------

fn classify(code: u16) -> Classification {
    Classification::of(Outcome::Status(StatusCode::from_u16(code).unwrap()))
}

#[test]
fn the_classification_table() {
    use Decision::{Accept, Retry, Stop};
    let rows: &[(u16, Decision, Reason)] = &[
        (100, Accept, Reason::Success),
        (200, Accept, Reason::Success),
        (201, Accept, Reason::Success),
        (204, Accept, Reason::Success),
        (303, Accept, Reason::Success),
        (400, Stop, Reason::Rejected),
        (401, Stop, Reason::Rejected),
        (402, Stop, Reason::Rejected),
        (404, Stop, Reason::Rejected),
        (408, Retry, Reason::RequestTimeout),
        (409, Retry, Reason::InFlight),
        (413, Stop, Reason::Rejected),
        (422, Stop, Reason::Rejected),
        (429, Retry, Reason::RateLimited),
        (500, Retry, Reason::ServerError),
        (501, Stop, Reason::Unsupported),
        (502, Retry, Reason::ServerError),
        (503, Retry, Reason::ServerError),
        (504, Retry, Reason::ServerError),
        (505, Stop, Reason::Unsupported),
        (599, Retry, Reason::ServerError),
        (600, Stop, Reason::Rejected),
        (999, Stop, Reason::Rejected),
    ];
    for &(code, decision, reason) in rows {
        assert_eq!(
            classify(code),
            Classification { decision, reason },
            "{code}"
        );
    }
}

#[test]
fn transport_failures_are_retried_and_an_unsendable_request_is_not() {
    let rows = [
        (Outcome::Connect, Decision::Retry, Reason::Connect),
        (Outcome::Timeout, Decision::Retry, Reason::Timeout),
        (Outcome::Body, Decision::Retry, Reason::Body),
        (Outcome::Transport, Decision::Retry, Reason::Transport),
        (Outcome::Unsendable, Decision::Stop, Reason::Unsendable),
    ];
    for (outcome, decision, reason) in rows {
        assert_eq!(
            Classification::of(outcome),
            Classification { decision, reason }
        );
    }
}

#[test]
fn every_status_code_is_classified_by_its_class() {
    for code in 100..=999u16 {
        let class = classify(code);
        let expected = match code {
            100..=399 => Decision::Accept,
            408 | 409 | 429 => Decision::Retry,
            501 | 505 => Decision::Stop,
            500..=599 => Decision::Retry,
            _ => Decision::Stop,
        };
        assert_eq!(class.decision, expected, "{code}");
        assert!(!class.reason.to_string().is_empty());
    }
}

// Backoff -----------------------------------------------------------------------

fn policy(initial: Duration, multiplier: f64, max: Duration) -> RetryPolicy {
    RetryPolicy::builder()
        .initial_backoff(initial)
        .multiplier(multiplier)
        .max_backoff(max)
        .build()
        .unwrap()
}

#[test]
fn ceilings_grow_exponentially_up_to_the_cap() {
    let backoff = Backoff::with_seed(&policy(100 * MS, 2.0, 2 * SEC), 0);
    let ceilings: Vec<Duration> = (1..=8).map(|n| backoff.ceiling(n)).collect();
    let ms = Duration::from_millis;
    assert_eq!(
        ceilings,
        [
            ms(100),
            ms(200),
            ms(400),
            ms(800),
            ms(1600),
            ms(2000),
            ms(2000),
            ms(2000)
        ]
    );
    assert_eq!(
        backoff.ceiling(0),
        100 * MS,
        "0 is taken as the first retry"
    );
    assert_eq!(backoff.ceiling(u32::MAX), 2 * SEC);
}

#[test]
fn a_multiplier_of_one_keeps_the_ceiling_constant() {
    let backoff = Backoff::with_seed(&policy(300 * MS, 1.0, 10 * SEC), 0);
    assert!((1..=50).all(|n| backoff.ceiling(n) == 300 * MS));
}

#[test]
fn huge_values_saturate_at_the_cap_without_panicking() {
    let backoff = Backoff::with_seed(&policy(SEC, 1e300, Duration::MAX), 0);
    assert_eq!(backoff.ceiling(1), SEC);
    assert_eq!(backoff.ceiling(2), Duration::MAX);
    let mut backoff = Backoff::with_seed(&policy(Duration::MAX, 2.0, Duration::MAX), 3);
    assert_eq!(backoff.ceiling(7), Duration::MAX);
    let _ = backoff.delay(7);
}

#[test]
fn full_jitter_delays_stay_within_zero_and_the_ceiling() {
    let policy = policy(50 * MS, 2.0, 5 * SEC);
    for seed in 0..200 {
        let mut backoff = Backoff::with_seed(&policy, seed);
        for retry in 1..=12 {
            let delay = backoff.delay(retry);
            assert!(
                delay <= backoff.ceiling(retry),
                "seed {seed} retry {retry}: {delay:?}"
            );
        }
    }
}

#[test]
fn full_jitter_spreads_over_the_whole_range() {
    // Full jitter draws from [0, ceiling], not [ceiling/2, ceiling]: with
    // fixed seeds, draws land in every tenth of the range and average
    // about half the ceiling.
    let policy = policy(SEC, 2.0, SEC);
    let mut tenths = [0u32; 10];
    let mut total = Duration::ZERO;
    let draws = 10_000u32;
    let mut backoff = Backoff::with_seed(&policy, 2024);
    for _ in 0..draws {
        let delay = backoff.delay(1);
        total += delay;
        tenths[((delay.as_secs_f64() * 10.0) as usize).min(9)] += 1;
    }
    assert!(tenths.iter().all(|&n| n > draws / 20), "{tenths:?}");
    let mean = total / draws;
    assert!(mean > 450 * MS && mean < 550 * MS, "mean {mean:?}");
}

#[test]
fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
    let policy = RetryPolicy::default();
    let schedule = |seed| {
        let mut backoff = Backoff::with_seed(&policy, seed);
        (1..=6).map(|n| backoff.delay(n)).collect::<Vec<_>>()
    };
    assert_eq!(schedule(9), schedule(9));
    assert_ne!(schedule(9), schedule(10));
}

// Retry-After -------------------------------------------------------------------

/// Sun, 06 Nov 1994 08:49:37 GMT.
const RFC_EXAMPLE: u64 = 784_111_777;

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

#[test]
fn delta_seconds() {
    let now = SystemTime::now();
    assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("1", now), Some(SEC));
    assert_eq!(parse_retry_after("120", now), Some(120 * SEC));
    assert_eq!(parse_retry_after("007", now), Some(7 * SEC));
    assert_eq!(parse_retry_after(" 5\t", now), Some(5 * SEC));
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(Duration::from_secs(u64::MAX)),
        "saturates rather than failing",
    );
}

#[test]
fn http_dates_in_all_three_forms() {
    let now = at(RFC_EXAMPLE - 90);
    let wait = Some(90 * SEC);
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        wait
    );
    assert_eq!(
        parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
        wait
    );
    assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), wait);
    assert_eq!(parse_retry_after("Sun Nov 06 08:49:37 1994", now), wait);
}

#[test]
fn an_http_date_wait_counts_from_now_including_fractions() {
    let now = at(RFC_EXAMPLE - 2) + 250 * MS;
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(1750 * MS)
    );
}

#[test]
fn a_date_in_the_past_means_retry_now() {
    let now = at(RFC_EXAMPLE + 3600);
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after("Mon, 01 Jan 1900 00:00:00 GMT", now),
        Some(Duration::ZERO)
    );
}

#[test]
fn a_two_digit_year_more_than_50_years_ahead_is_in_the_past_century() {
    // In 2030, "94" is 1994 (2094 is 64 years ahead), "79" is 2079.
    let in_2030 = at(1_893_456_000); // 2030-01-01T00:00:00Z
    assert_eq!(
        parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", in_2030),
        Some(Duration::ZERO)
    );
    let ahead = parse_retry_after("Wednesday, 01-Jan-79 00:00:00 GMT", in_2030).unwrap();
    let days = ahead.as_secs() / 86_400;
    assert_eq!(days, 49 * 365 + 12, "2030 to 2079: 49 years, 12 leap days");
}

#[test]
fn garbage_is_ignored() {
    let now = at(RFC_EXAMPLE - 90);
    for garbage in [
        "",
        "  ",
        "-1",
        "+5",
        "1.5",
        "1e3",
        "5s",
        "soon",
        "0x10",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT extra",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Funday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 94",
        "Xyz Nov  6 08:49:37 1994",
    ] {
        assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
    }
}

fn headers(values: &[&[u8]]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(RETRY_AFTER, HeaderValue::from_bytes(value).unwrap());
    }
    headers
}

#[test]
fn the_cap_applies_to_both_forms() {
    let now = at(RFC_EXAMPLE - 3600);
    let cap = 30 * SEC;
    assert_eq!(retry_after(&headers(&[b"3600"]), now, cap), Some(cap));
    assert_eq!(
        retry_after(&headers(&[b"Sun, 06 Nov 1994 08:49:37 GMT"]), now, cap),
        Some(cap)
    );
    assert_eq!(retry_after(&headers(&[b"10"]), now, cap), Some(10 * SEC));
}

#[test]
fn an_absent_repeated_or_undecodable_header_is_ignored() {
    let now = SystemTime::now();
    assert_eq!(retry_after(&HeaderMap::new(), now, SEC), None);
    assert_eq!(retry_after(&headers(&[b"1", b"2"]), now, 10 * SEC), None);
    assert_eq!(retry_after(&headers(&[b"1\xff"]), now, 10 * SEC), None);
}

// Policy validation -------------------------------------------------------------

#[test]
fn the_default_policy_is_valid_and_the_builder_starts_from_it() {
    assert_eq!(RetryPolicy::builder().build(), Ok(RetryPolicy::default()));
    let policy = RetryPolicy::default();
    assert_eq!(policy.max_attempts(), RetryPolicy::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(
        policy.attempt_timeout(),
        Some(RetryPolicy::DEFAULT_ATTEMPT_TIMEOUT)
    );
    assert_eq!(policy.deadline(), Some(RetryPolicy::DEFAULT_DEADLINE));
}

#[test]
fn invalid_values_are_typed_errors_naming_their_option() {
    let b = RetryPolicy::builder;
    let cases = [
        (b().max_attempts(0).build(), PolicyError::ZeroMaxAttempts),
        (
            b().initial_backoff(Duration::ZERO).build(),
            PolicyError::ZeroInitialBackoff,
        ),
        (
            b().multiplier(0.5).build(),
            PolicyError::InvalidMultiplier { multiplier: 0.5 },
        ),
        (
            b().multiplier(-2.0).build(),
            PolicyError::InvalidMultiplier { multiplier: -2.0 },
        ),
        (
            b().multiplier(f64::INFINITY).build(),
            PolicyError::InvalidMultiplier {
                multiplier: f64::INFINITY,
            },
        ),
        (
            b().initial_backoff(2 * SEC).max_backoff(SEC).build(),
            PolicyError::MaxBackoffBelowInitial {
                initial: 2 * SEC,
                max: SEC,
            },
        ),
        (
            b().max_retry_after(Duration::ZERO).build(),
            PolicyError::ZeroMaxRetryAfter,
        ),
        (
            b().attempt_timeout(Duration::ZERO).build(),
            PolicyError::ZeroAttemptTimeout,
        ),
        (
            b().deadline(Duration::ZERO).build(),
            PolicyError::ZeroDeadline,
        ),
    ];
    for (result, expected) in cases {
        let err = result.unwrap_err();
        assert_eq!(err, expected);
        assert!(err.to_string().starts_with(err.field()), "{err}");
    }
    let nan = b().multiplier(f64::NAN).build().unwrap_err();
    assert!(matches!(nan, PolicyError::InvalidMultiplier { multiplier } if multiplier.is_nan()));
}

#[test]
fn boundary_values_are_valid() {
    let policy = RetryPolicy::builder()
        .max_attempts(1)
        .multiplier(1.0)
        .initial_backoff(Duration::from_nanos(1))
        .max_backoff(Duration::from_nanos(1))
        .max_retry_after(Duration::from_nanos(1))
        .attempt_timeout(Duration::from_nanos(1))
        .deadline(Duration::from_nanos(1))
        .build();
    assert!(policy.is_ok());
    let unbounded = RetryPolicy::builder()
        .max_attempts(u32::MAX)
        .max_backoff(Duration::MAX)
        .no_attempt_timeout()
        .no_deadline()
        .build()
        .unwrap();
    assert_eq!(
        (unbounded.attempt_timeout(), unbounded.deadline()),
        (None, None)
    );
}
