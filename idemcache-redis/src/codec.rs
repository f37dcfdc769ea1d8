//! Values as bytes: the [`Codec`] a [`RedisStore`](crate::RedisStore)
//! encodes results with before they go into a record's `v` field.
//!
//! | codec | values | feature |
//! |---|---|---|
//! | [`Raw`] | `Vec<u8>`, `String` (checked UTF-8 on decode), `Box<[u8]>` | — |
//! | [`Postcard`] | any `Serialize + DeserializeOwned` | `serde` |
//!
//! Every replica of a service must use the same codec for the same prefix:
//! the bytes in Redis are the contract between them.

use std::error::Error;
use std::fmt;

/// Turns values into bytes and back. Implement it for your own format
/// (JSON, a protobuf, a compressed body...); the store calls it outside any
/// lock, once per write and once per read.
///
/// ```
/// use idemcache_redis::{Codec, CodecError, Raw};
///
/// let bytes = Codec::<String>::encode(&Raw, &"201 created".to_string())?;
/// assert_eq!(bytes, b"201 created");
/// let back: String = Raw.decode(&bytes)?;
/// assert_eq!(back, "201 created");
/// # Ok::<(), CodecError>(())
/// ```
pub trait Codec<V>: Send + Sync + 'static {
    /// The bytes stored for `value`.
    ///
    /// # Errors
    ///
    /// A value the format cannot represent; the store answers
    /// [`StoreError::Codec`](idemcache::store::StoreError::Codec) and
    /// stores nothing.
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError>;

    /// The value stored as `bytes`.
    ///
    /// # Errors
    ///
    /// Bytes that are not a value of this format (written by another
    /// codec, or another version of the type); the store answers
    /// [`StoreError::Codec`](idemcache::store::StoreError::Codec).
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// Why a value could not be encoded or decoded.
///
/// ```
/// use idemcache_redis::CodecError;
///
/// let err = CodecError::new("not UTF-8");
/// assert_eq!(err.to_string(), "not UTF-8");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecError {
    reason: String,
}

impl CodecError {
    /// An error saying `reason`.
    ///
    /// ```
    /// # use idemcache_redis::CodecError;
    /// let err = CodecError::new(format!("{} bytes left over", 3));
    /// assert!(err.to_string().contains("left over"));
    /// ```
    pub fn new(reason: impl fmt::Display) -> Self {
        CodecError {
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Error for CodecError {}

/// Bytes as they are: for `Vec<u8>`, `Box<[u8]>` and `String` values (a
/// response body the service already serialized). Decoding a `String`
/// checks UTF-8.
///
/// ```
/// use idemcache_redis::{Codec, Raw};
///
/// let bytes = Raw.encode(&vec![1u8, 2, 3]).unwrap();
/// let back: Vec<u8> = Raw.decode(&bytes).unwrap();
/// assert_eq!(back, [1, 2, 3]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Raw;

impl Codec<Vec<u8>> for Raw {
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, CodecError> {
        Ok(value.clone())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

impl Codec<Box<[u8]>> for Raw {
    fn encode(&self, value: &Box<[u8]>) -> Result<Vec<u8>, CodecError> {
        Ok(value.to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Box<[u8]>, CodecError> {
        Ok(bytes.into())
    }
}

impl Codec<String> for Raw {
    fn encode(&self, value: &String) -> Result<Vec<u8>, CodecError> {
        Ok(value.as_bytes().to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
        String::from_utf8(bytes.to_vec())
            .map_err(|err| CodecError::new(format!("a stored String is not UTF-8: {err}")))
    }
}

/// [postcard](https://docs.rs/postcard): compact, schema-less encoding of
/// any `Serialize + DeserializeOwned` value, the format the core's
/// snapshots use. The default codec of
/// [`RedisStoreBuilder::connect`](crate::RedisStoreBuilder::connect).
///
/// Postcard is not self-describing: a field added to the type changes the
/// format, so change a stored type together with the store's
/// [prefix](crate::RedisStoreBuilder::prefix) (or wait out the retention).
///
/// ```
/// use idemcache_redis::{Codec, Postcard};
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Response { status: u16, body: String }
///
/// let response = Response { status: 201, body: "created".into() };
/// let bytes = Postcard.encode(&response).unwrap();
/// let back: Response = Postcard.decode(&bytes).unwrap();
/// assert_eq!(back, response);
/// ```
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Postcard;

#[cfg(feature = "serde")]
impl<V> Codec<V> for Postcard
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        postcard::to_allocvec(value).map_err(|err| CodecError::new(format!("postcard: {err}")))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        postcard::from_bytes(bytes).map_err(|err| CodecError::new(format!("postcard: {err}")))
    }
}
