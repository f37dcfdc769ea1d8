//! The two headers the client speaks: `Idempotency-Key` out, and
//! `Idempotent-Replayed` back.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `Idempotency-Key`, the request header carrying the key
/// (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `Idempotent-Replayed`, the response header a server sets to `true` on a
/// response replayed from its idempotency record rather than executed (the
/// marker Stripe introduced; the draft names none).
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest key, in bytes (before quoting), that servers built on idemcache
/// accept.
pub const MAX_KEY_LEN: usize = 255;

/// Whether a response was replayed: its `Idempotent-Replayed` header is
/// `true` (ASCII case-insensitively, surrounding whitespace ignored).
///
/// A replay means the server executed the request earlier (on an attempt
/// whose response this client may never have seen) and returned the stored
/// outcome now.
///
/// # Examples
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use idemcache_http::client::{IDEMPOTENT_REPLAYED, is_replayed};
///
/// let mut headers = HeaderMap::new();
/// assert!(!is_replayed(&headers));
/// headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
/// assert!(is_replayed(&headers));
/// ```
pub fn is_replayed(headers: &HeaderMap) -> bool {
    headers.get(&IDEMPOTENT_REPLAYED).is_some_and(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
    })
}

/// The `Idempotency-Key` value for `key`: an RFC 8941 sf-string
/// (`"<key>"`, with `"` and `\` escaped), which a server must accept as
/// it accepts the bare form. `None` for a key servers refuse: empty,
/// longer than [`MAX_KEY_LEN`], or with a byte that is not visible ASCII,
/// or a comma (a comma would read as a second field value).
pub(crate) fn key_header_value(key: &str) -> Option<HeaderValue> {
    let valid = (1..=MAX_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if !valid {
        return None;
    }
    let mut quoted = String::with_capacity(key.len() + 2);
    quoted.push('"');
    for c in key.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    HeaderValue::from_str(&quoted).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sent_as_quoted_sf_strings() {
        let value = |k: &str| key_header_value(k).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(value("abc").as_deref(), Some("\"abc\""));
        assert_eq!(value(r#"a"b\c"#).as_deref(), Some(r#""a\"b\\c""#));
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(value(&longest), Some(format!("\"{longest}\"")));
    }

    #[test]
    fn keys_servers_refuse_are_not_encoded() {
        for bad in ["", "a b", "a,b", "é", "tab\t", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert_eq!(key_header_value(bad), None, "{bad:?}");
        }
    }
}
