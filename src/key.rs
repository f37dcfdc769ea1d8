//! Idempotency-key helpers: the two kinds of key every client needs.
//!
//! - [`random`]: a fresh UUID v4 per logical request, reused on every retry
//!   of that request (the IETF draft's recommendation).
//! - [`deterministic`]: the same key for the same logical request, computed
//!   from its parts (form resubmission, batch jobs replayed from a file).
//!
//! Scope keys to the caller on the server side (a `(tenant, key)` tuple as
//! the cache's key): an unscoped key lets one client replay another's
//! response.
//!
//! ```
//! use idemcache::key;
//!
//! let fresh = key::random();
//! assert_eq!(fresh.len(), 36);
//! let same = key::deterministic(["user-7", "checkout", "cart-1234"]);
//! assert_eq!(same, key::deterministic(["user-7", "checkout", "cart-1234"]));
//! assert_ne!(key::deterministic(["ab", "c"]), key::deterministic(["a", "bc"]));
//! ```

/// A new random idempotency key: a UUID v4 in its 36-character hyphenated
/// lowercase form.
///
/// ```
/// let key = idemcache::key::random();
/// assert_eq!(key.len(), 36);
/// assert_ne!(key, idemcache::key::random());
/// ```
#[cfg(feature = "uuid")]
pub fn random() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// A key derived from the request's parts: 64 lowercase hex digits of
/// SHA-256 over each part's length (little-endian `u64`) followed by its
/// bytes. The same parts always give the same key, on any platform and
/// crate version.
///
/// ```
/// use idemcache::key;
///
/// // A form resubmitted with the same contents gets the same key.
/// let first = key::deterministic(["user-42", "checkout", "cart-7"]);
/// assert_eq!(first, key::deterministic(["user-42", "checkout", "cart-7"]));
/// assert_eq!(first.len(), 64);
/// ```
#[cfg(feature = "digest")]
pub fn deterministic<I>(parts: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    use sha2::{Digest, Sha256};
    use std::fmt::Write;

    let mut digest = Sha256::new();
    for part in parts {
        let part = part.as_ref();
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    digest
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}
