//! The `Idempotency-Key` header: parsing, validation, and the scoped key a
//! record is stored under.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderMap;
use http::header::AsHeaderName;
use idemcache::Fingerprint;

/// The longest key accepted, in bytes after unquoting (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// Why a request's idempotency key was refused (answered with 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The request has no key header.
    Missing,
    /// The header field appears more than once.
    Repeated,
    /// Empty after unquoting.
    Empty,
    /// Longer than the configured maximum.
    TooLong,
    /// Not an RFC 8941 sf-string or token of visible ASCII, or it contains
    /// a comma.
    Malformed,
}

impl KeyError {
    /// A sentence for the problem's `detail`.
    pub fn detail(self) -> &'static str {
        match self {
            KeyError::Missing => {
                "This operation is idempotent and requires an Idempotency-Key header."
            }
            KeyError::Repeated => "Send the Idempotency-Key header once.",
            KeyError::Empty => "The Idempotency-Key is empty.",
            KeyError::TooLong => "The Idempotency-Key is too long (at most 255 bytes).",
            KeyError::Malformed => {
                "The Idempotency-Key must be an RFC 8941 string (\"...\") or token of visible ASCII, without commas."
            }
        }
    }
}

/// The key of `header` in `headers`: an RFC 8941 sf-string (`"abc"`, with
/// `\"` and `\\` escapes) or a bare token, the same key either way; after
/// unquoting 1..=`max_len` bytes of visible ASCII (0x21–0x7E, spaces too
/// inside quotes) without a comma. A repeated header field is refused.
///
/// ```
/// use http::HeaderMap;
/// use idemcache_http::{KeyError, parse_key};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("idempotency-key", "\"8e03978e-40d5\"".parse().unwrap());
/// assert_eq!(parse_key(&headers, "idempotency-key", 255), Ok("8e03978e-40d5".to_string()));
/// headers.insert("idempotency-key", "8e03978e-40d5".parse().unwrap());
/// assert_eq!(parse_key(&headers, "idempotency-key", 255), Ok("8e03978e-40d5".to_string()));
/// headers.append("idempotency-key", "other".parse().unwrap());
/// assert_eq!(parse_key(&headers, "idempotency-key", 255), Err(KeyError::Repeated));
/// ```
///
/// # Errors
///
/// The [`KeyError`] that the layer answers with 400.
pub fn parse_key(
    headers: &HeaderMap,
    header: impl AsHeaderName,
    max_len: usize,
) -> Result<String, KeyError> {
    parse_key_str(headers, header, max_len).map(Cow::into_owned)
}

/// [`parse_key`], borrowing the key from the header where it needs no
/// unquoting (the layer copies it once, into its [`ScopedKey`]).
pub(crate) fn parse_key_str(
    headers: &HeaderMap,
    header: impl AsHeaderName,
    max_len: usize,
) -> Result<Cow<'_, str>, KeyError> {
    let mut values = headers.get_all(header).iter();
    let value = values.next().ok_or(KeyError::Missing)?;
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    let raw = value.as_bytes();
    let raw = trim_ows(raw);
    let key = match raw {
        [b'"', inner @ .., b'"'] => Cow::Owned(unquote(inner)?),
        [b'"', ..] => return Err(KeyError::Malformed),
        _ => {
            if raw
                .iter()
                .any(|&b| !(0x21..=0x7e).contains(&b) || b == b'"')
            {
                return Err(KeyError::Malformed);
            }
            Cow::Borrowed(raw)
        }
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > max_len {
        return Err(KeyError::TooLong);
    }
    if key.contains(&b',') {
        return Err(KeyError::Malformed);
    }
    // Only ASCII got through.
    match key {
        Cow::Borrowed(raw) => std::str::from_utf8(raw).map(Cow::Borrowed),
        Cow::Owned(raw) => String::from_utf8(raw)
            .map(Cow::Owned)
            .map_err(|e| e.utf8_error()),
    }
    .map_err(|_| KeyError::Malformed)
}

/// Optional whitespace around a field value (spaces and tabs).
fn trim_ows(mut raw: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = raw {
        raw = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = raw {
        raw = rest;
    }
    raw
}

/// The content of an RFC 8941 sf-string: printable ASCII (0x20–0x7E),
/// with `\"` and `\\` the only escapes.
fn unquote(inner: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => out.push(escaped),
                _ => return Err(KeyError::Malformed),
            },
            b'"' => return Err(KeyError::Malformed),
            0x20..=0x7e => out.push(b),
            _ => return Err(KeyError::Malformed),
        }
    }
    Ok(out)
}

/// Whose key it is: a digest of the principal (an API key, a user id), so
/// that one client's key never replays another's response, and so that the
/// credential itself never reaches the store (records reach snapshot files
/// and shared stores).
///
/// ```
/// use idemcache_http::Scope;
///
/// let alice = Scope::of(["Bearer alice-token"]);
/// assert_eq!(alice, Scope::of(["Bearer alice-token"]));
/// assert_ne!(alice, Scope::of(["Bearer bob-token"]));
/// assert_ne!(alice, Scope::anonymous());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Scope(Fingerprint);

impl Scope {
    /// The scope of a principal given as parts (SHA-256 of the
    /// length-prefixed parts, truncated to 128 bits: [`Fingerprint::of`]).
    pub fn of<I>(parts: I) -> Scope
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Scope(
            Fingerprint::builder()
                .part("idemcache-http.scope")
                .fold_parts(parts),
        )
    }

    /// The one scope of requests without a principal.
    pub fn anonymous() -> Scope {
        static ANONYMOUS: std::sync::OnceLock<Scope> = std::sync::OnceLock::new();
        *ANONYMOUS.get_or_init(|| Scope::of::<[&[u8]; 0]>([]))
    }

    /// The digest.
    pub fn fingerprint(&self) -> Fingerprint {
        self.0
    }
}

/// Feeds every part to a fingerprint builder.
trait FoldParts {
    fn fold_parts<I>(self, parts: I) -> Fingerprint
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>;
}

impl FoldParts for idemcache::FingerprintBuilder {
    fn fold_parts<I>(self, parts: I) -> Fingerprint
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        parts
            .into_iter()
            .fold(self, |b, part| b.part(part))
            .finish()
    }
}

/// The key a record is stored under: the client's idempotency key within
/// its [`Scope`].
///
/// ```
/// use idemcache_http::{Scope, ScopedKey};
///
/// let key = ScopedKey::new(Scope::anonymous(), "order-7");
/// assert_eq!(key.key(), "order-7");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ScopedKey {
    scope: Scope,
    /// Shared, not copied, by clones: a store clones the key of every
    /// claim it looks up.
    key: Arc<str>,
}

impl ScopedKey {
    /// `key` within `scope`.
    pub fn new(scope: Scope, key: impl Into<String>) -> Self {
        ScopedKey {
            scope,
            key: key.into().into(),
        }
    }

    /// `key` within `scope`, without a copy.
    pub(crate) fn from_shared(scope: Scope, key: Arc<str>) -> Self {
        ScopedKey { scope, key }
    }

    /// The scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The client's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Display for ScopedKey {
    /// `<scope as 32 hex digits>/<key>`: unambiguous, as the scope has a
    /// fixed length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.scope.0, self.key)
    }
}

/// A scoped key as a string key (`<scope hex>/<key>`), so the layer runs
/// on any store keyed by `String`, such as the Redis store.
///
/// ```
/// use idemcache_http::{Scope, ScopedKey};
///
/// let key = String::from(ScopedKey::new(Scope::anonymous(), "order-7"));
/// assert!(key.ends_with("/order-7"));
/// assert_eq!(key.len(), 32 + 1 + 7);
/// ```
impl From<ScopedKey> for String {
    fn from(key: ScopedKey) -> String {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<String, KeyError> {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", value.parse().unwrap());
        parse_key(&headers, "idempotency-key", MAX_KEY_LEN)
    }

    #[test]
    fn quoted_and_bare_forms_give_the_same_key() {
        assert_eq!(parse("\"abc-123\""), Ok("abc-123".into()));
        assert_eq!(parse("abc-123"), Ok("abc-123".into()));
        assert_eq!(parse("  abc-123 "), Ok("abc-123".into()));
    }

    #[test]
    fn sf_string_escapes_are_unquoted() {
        assert_eq!(parse(r#""a\"b\\c""#), Ok(r#"a"b\c"#.into()));
        assert_eq!(parse(r#""a\nb""#), Err(KeyError::Malformed));
        assert_eq!(parse("\"a b\""), Ok("a b".into()));
    }

    #[test]
    fn bad_keys_are_refused_with_their_reason() {
        assert_eq!(parse("\"\""), Err(KeyError::Empty));
        assert_eq!(parse(&"k".repeat(256)), Err(KeyError::TooLong));
        assert_eq!(parse(&"k".repeat(255)), Ok("k".repeat(255)));
        assert_eq!(parse("a,b"), Err(KeyError::Malformed));
        assert_eq!(parse("\"a,b\""), Err(KeyError::Malformed));
        assert_eq!(parse("\"unterminated"), Err(KeyError::Malformed));
        assert_eq!(parse("a b"), Err(KeyError::Malformed));
        let headers = HeaderMap::new();
        assert_eq!(
            parse_key(&headers, "idempotency-key", 255),
            Err(KeyError::Missing)
        );
    }

    #[test]
    fn non_ascii_bytes_are_malformed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "idempotency-key",
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(
            parse_key(&headers, "idempotency-key", 255),
            Err(KeyError::Malformed)
        );
    }
}
