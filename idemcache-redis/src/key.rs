//! Where a logical key's record lives: `<prefix>:v1:{<encoded key>}`.
//!
//! | part | why |
//! |---|---|
//! | `<prefix>` | one namespace per service (and per stored type); no `{`/`}` |
//! | `v1` | the record format; a new format gets a new segment, so replicas of two versions never read each other's records |
//! | `{<encoded key>}` | the whole logical key is the Cluster hash tag: records spread over all slots, and each script touches one key, so one slot |
//!
//! The logical key is encoded so that the hash tag closes where it should:
//! `%` → `%25`, `{` → `%7B`, `}` → `%7D`, every other byte as it is. The
//! encoding is injective (two keys never share a record), and an encoded
//! key longer than the store's cap is refused with
//! [`StoreError::InvalidKey`].

use idemcache::store::StoreError;

/// The record format's segment of every key.
pub(crate) const FORMAT: &str = "v1";

/// Maps logical keys to Redis keys for one store.
#[derive(Clone, Debug)]
pub(crate) struct KeyLayout {
    /// `<prefix>:v1:{`
    head: String,
    max_encoded_len: usize,
}

impl KeyLayout {
    /// A layout under `prefix` (checked by the builder: no braces).
    pub(crate) fn new(prefix: &str, max_encoded_len: usize) -> Self {
        KeyLayout {
            head: format!("{prefix}:{FORMAT}:{{"),
            max_encoded_len,
        }
    }

    /// The Redis key of `key`.
    pub(crate) fn redis_key(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let escapes = key
            .bytes()
            .filter(|b| matches!(b, b'%' | b'{' | b'}'))
            .count();
        let encoded_len = key.len() + 2 * escapes;
        if encoded_len > self.max_encoded_len {
            return Err(StoreError::InvalidKey {
                reason: format!(
                    "the key encodes to {encoded_len} bytes, more than this store's cap of {} (RedisStoreBuilder::max_key_len); use a shorter key, or a digest of it",
                    self.max_encoded_len
                ),
            });
        }
        let mut out = Vec::with_capacity(self.head.len() + encoded_len + 1);
        out.extend_from_slice(self.head.as_bytes());
        for byte in key.bytes() {
            match byte {
                b'%' => out.extend_from_slice(b"%25"),
                b'{' => out.extend_from_slice(b"%7B"),
                b'}' => out.extend_from_slice(b"%7D"),
                other => out.push(other),
            }
        }
        out.push(b'}');
        Ok(out)
    }
}

/// Whether `prefix` can start a key: not empty, no hash-tag braces.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("the key prefix is empty; name the service (\"orders\", say)".into());
    }
    if prefix.contains(['{', '}']) {
        return Err(format!(
            "the key prefix {prefix:?} contains a brace: it would move the Cluster hash tag off the logical key"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KeyLayout {
        KeyLayout::new("svc", 16)
    }

    fn key(k: &str) -> String {
        String::from_utf8(layout().redis_key(k).unwrap()).unwrap()
    }

    #[test]
    fn a_key_is_the_whole_hash_tag() {
        assert_eq!(key("order-7"), "svc:v1:{order-7}");
        assert_eq!(key(""), "svc:v1:{}");
    }

    #[test]
    fn braces_and_percent_are_escaped() {
        assert_eq!(key("a{b}c"), "svc:v1:{a%7Bb%7Dc}");
        assert_eq!(key("%7B"), "svc:v1:{%257B}");
        assert_ne!(key("{"), key("%7B"), "the encoding is injective");
        let tag = key("}x{y}");
        let inner = &tag["svc:v1:{".len()..tag.len() - 1];
        assert!(!inner.contains(['{', '}']), "{tag}");
    }

    #[test]
    fn the_encoded_length_is_capped() {
        assert!(layout().redis_key(&"a".repeat(16)).is_ok());
        let err = layout().redis_key(&"a".repeat(17)).unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{err:?}");
        // 6 braces encode to 18 bytes.
        let err = layout().redis_key("{{{}}}").unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{err:?}");
    }

    #[test]
    fn prefixes_without_braces_are_accepted() {
        assert!(check_prefix("orders").is_ok());
        assert!(check_prefix("a:b").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a{b").is_err());
        assert!(check_prefix("a}b").is_err());
    }
}
