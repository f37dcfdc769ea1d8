//! Request fingerprints: a 128-bit digest of what a request asked for, so a
//! key reused with a different request is caught.

use std::fmt;
use std::str::FromStr;

/// A 128-bit digest of a request (method, route, body, whatever identifies
/// it), stored with a claim and its completed record.
///
/// A claim whose fingerprint differs from the record's (or the in-progress
/// claim's) gets [`Claim::Mismatch`](crate::Claim::Mismatch); entries written
/// without a fingerprint (by `insert` or `get_or_compute`) match any.
///
/// # Stability
///
/// [`Fingerprint::of`] is a fixed, documented function, stable across
/// processes, platforms and crate versions (fingerprints are persisted and
/// shared between replicas): the first 16 bytes of
/// SHA-256(`"idemcache.fingerprint.v1"` ‖ for each part: its length as a
/// little-endian `u64` ‖ its bytes). Length prefixes make `("ab", "c")` and
/// `("a", "bc")` differ. A change would be a new version string.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "digest")] {
/// use idemcache::Fingerprint;
///
/// let a = Fingerprint::of(["POST", "/v1/charges", r#"{"amount":100}"#]);
/// let b = Fingerprint::builder()
///     .part("POST")
///     .part("/v1/charges")
///     .part(r#"{"amount":100}"#)
///     .finish();
/// assert_eq!(a, b);
/// assert_ne!(Fingerprint::of(["ab", "c"]), Fingerprint::of(["a", "bc"]));
/// // Round-trips through its hex form, for storage and logs.
/// assert_eq!(a.to_string().parse::<Fingerprint>(), Ok(a));
/// # }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// A fingerprint from a digest you computed yourself.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Fingerprint(bytes)
    }

    /// The 16 digest bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

#[cfg(feature = "digest")]
mod digest {
    use sha2::{Digest, Sha256};

    use super::Fingerprint;

    /// Domain separation: the version of the fingerprint function.
    const DOMAIN: &[u8] = b"idemcache.fingerprint.v1";

    impl Fingerprint {
        /// The fingerprint of a request given as parts (see the type's docs
        /// for the exact, stable function).
        ///
        /// ```
        /// use idemcache::Fingerprint;
        ///
        /// let a = Fingerprint::of(["POST", "/charges", r#"{"amount":100}"#]);
        /// let b = Fingerprint::of(["POST", "/charges", r#"{"amount":100}"#]);
        /// assert_eq!(a, b); // stable: the same request, the same fingerprint
        /// assert_ne!(a, Fingerprint::of(["POST", "/charges", r#"{"amount":999}"#]));
        /// ```
        pub fn of<I>(parts: I) -> Fingerprint
        where
            I: IntoIterator,
            I::Item: AsRef<[u8]>,
        {
            // The builder's steps on one digest in place (the builder moves
            // its digest state through every part).
            let mut digest = Sha256::new();
            digest.update(DOMAIN);
            for part in parts {
                update_part(&mut digest, part.as_ref());
            }
            truncate(digest)
        }

        /// Feeds the parts one at a time, for requests assembled piecewise.
        ///
        /// ```
        /// use idemcache::Fingerprint;
        ///
        /// let piecewise = Fingerprint::builder().part("POST").part("/charges").finish();
        /// assert_eq!(piecewise, Fingerprint::of(["POST", "/charges"]));
        /// ```
        pub fn builder() -> FingerprintBuilder {
            let mut digest = Sha256::new();
            digest.update(DOMAIN);
            FingerprintBuilder { digest }
        }
    }

    /// Builds a [`Fingerprint`] part by part; see [`Fingerprint::builder`].
    #[derive(Clone)]
    #[must_use = "call .finish() to get the fingerprint"]
    pub struct FingerprintBuilder {
        digest: Sha256,
    }

    impl FingerprintBuilder {
        /// Adds one length-prefixed part.
        ///
        /// ```
        /// use idemcache::Fingerprint;
        ///
        /// // Parts are length-prefixed: "ab" + "c" differs from "a" + "bc".
        /// let one = Fingerprint::builder().part("ab").part("c").finish();
        /// let two = Fingerprint::builder().part("a").part("bc").finish();
        /// assert_ne!(one, two);
        /// ```
        pub fn part(mut self, part: impl AsRef<[u8]>) -> Self {
            update_part(&mut self.digest, part.as_ref());
            self
        }

        /// The fingerprint of the parts added so far.
        ///
        /// ```
        /// use idemcache::Fingerprint;
        ///
        /// let fingerprint = Fingerprint::builder().part("GET /health").finish();
        /// assert_eq!(fingerprint.to_string().len(), 32); // 128 bits in hex
        /// ```
        pub fn finish(self) -> Fingerprint {
            truncate(self.digest)
        }
    }

    /// One part: its length (`u64`, little-endian), then its bytes.
    fn update_part(digest: &mut Sha256, part: &[u8]) {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }

    /// The first 128 bits of the digest.
    fn truncate(digest: Sha256) -> Fingerprint {
        let full = digest.finalize();
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&full[..16]);
        Fingerprint(bytes)
    }

    impl std::fmt::Debug for FingerprintBuilder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FingerprintBuilder").finish_non_exhaustive()
        }
    }
}

#[cfg(feature = "digest")]
pub use digest::FingerprintBuilder;

impl fmt::Display for Fingerprint {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a string is not a fingerprint: it must be exactly 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFingerprintError;

impl fmt::Display for ParseFingerprintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a fingerprint is exactly 32 hexadecimal digits")
    }
}

impl std::error::Error for ParseFingerprintError {}

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        // `from_str_radix` alone would also take a sign ("+f").
        if s.len() != 32 || !s.iter().all(u8::is_ascii_hexdigit) {
            return Err(ParseFingerprintError);
        }
        let mut bytes = [0; 16];
        for (byte, pair) in bytes.iter_mut().zip(s.chunks_exact(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| ParseFingerprintError)?;
            *byte = u8::from_str_radix(digits, 16).map_err(|_| ParseFingerprintError)?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// Human-readable formats (JSON, TOML) get the 32-digit hex string;
/// binary formats the 16 bytes.
#[cfg(feature = "serde")]
impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let hex = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            hex.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(deserializer).map(Fingerprint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_takes_exactly_32_hex_digits() {
        let hex = "00112233445566778899aabbccddeeff";
        let parsed: Fingerprint = hex.parse().unwrap();
        assert_eq!(parsed.to_string(), hex);
        assert_eq!(hex.to_uppercase().parse::<Fingerprint>(), Ok(parsed));
        for bad in [
            "",
            &hex[1..],
            "+0112233445566778899aabbccddeeff",
            "0g112233445566778899aabbccddeeff",
        ] {
            assert_eq!(
                bad.parse::<Fingerprint>(),
                Err(ParseFingerprintError),
                "{bad:?}"
            );
        }
    }
}
