//! The two headers the client speaks: `Idempotency-Key` out, and
//! `Idempotent-Replayed` back.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::MAX_KEY_LEN;

/// `Idempotency-Key`, the request header carrying the key
/// (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `Idempotent-Replayed`, the response header a server sets to `true` on a
/// response replayed from its idempotency record rather than executed (the
/// marker Stripe introduced; the draft names none).
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

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
/// it accepts the bare form. `None` for a key [`parse_key`] refuses:
/// empty, longer than [`MAX_KEY_LEN`], or with a byte that is neither
/// visible ASCII nor a space, or a comma.
///
/// [`parse_key`]: crate::parse_key
pub(crate) fn key_header_value(key: &str) -> Option<HeaderValue> {
    let valid = (1..=MAX_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b',');
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
    use crate::{KeyError, parse_key};

    fn sent(key: &str) -> Option<String> {
        key_header_value(key).map(|v| v.to_str().unwrap().to_owned())
    }

    /// What the server layer reads back from the header the client sends.
    fn read_back(key: &str) -> Result<String, KeyError> {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, key_header_value(key).unwrap());
        parse_key(&headers, IDEMPOTENCY_KEY.as_str(), MAX_KEY_LEN)
    }

    #[test]
    fn keys_are_sent_as_quoted_sf_strings() {
        assert_eq!(sent("abc").as_deref(), Some("\"abc\""));
        assert_eq!(sent(r#"a"b\c"#).as_deref(), Some(r#""a\"b\\c""#));
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(sent(&longest), Some(format!("\"{longest}\"")));
    }

    #[test]
    fn the_server_reads_back_every_key_the_client_sends() {
        let longest = "k".repeat(MAX_KEY_LEN);
        let random = idemcache::key::random();
        let digest = idemcache::key::deterministic(["a", "b"]);
        for key in [
            "abc",
            r#"a"b\c"#,
            "with space",
            "~!#$%&'()*+-./:;<=>?@[]^_`{|}",
            &longest,
            &random,
            &digest,
        ] {
            assert_eq!(read_back(key).as_deref(), Ok(key), "{key:?}");
        }
    }

    #[test]
    fn keys_servers_refuse_are_not_encoded() {
        for bad in [
            "",
            "a,b",
            "é",
            "tab\t",
            "nl\n",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert_eq!(key_header_value(bad), None, "{bad:?}");
        }
    }
}
