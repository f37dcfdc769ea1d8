//! What is kept of a response, and how a replay is rebuilt from it.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// The response headers kept by default: those that describe the
/// representation or the created resource. Never `Set-Cookie` (a session
/// must not be replayed to a retry), `Date` (set fresh), or hop-by-hop
/// headers.
pub const DEFAULT_STORED_HEADERS: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LOCATION,
    header::LOCATION,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
];

/// A response as the store keeps it: status, allow-listed headers, body.
///
/// `Cache<ScopedKey, StoredResponse>` is the in-process store for the
/// layer; with the `serde` feature it serializes (headers as name/bytes
/// pairs), so the core's snapshot files can keep it across restarts.
/// Cloning it (every replay does) copies no header or body bytes.
///
/// ```
/// use http::StatusCode;
/// use idemcache_http::StoredResponse;
///
/// let stored = StoredResponse::new(StatusCode::CREATED, vec![], "{\"id\":1}");
/// let replay = stored.to_response();
/// assert_eq!(replay.status(), StatusCode::CREATED);
/// assert_eq!(replay.headers()["idempotent-replayed"], "true");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    status: StatusCode,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    body: Bytes,
}

impl StoredResponse {
    /// A stored response from its parts.
    pub fn new(
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: impl Into<Bytes>,
    ) -> Self {
        StoredResponse {
            status,
            headers: headers.into(),
            body: body.into(),
        }
    }

    /// What to keep of a response with `headers`: the headers named in
    /// `allowed`, in the order the header map yields them (each name's
    /// values together, in order). One pass over the response's few
    /// headers, comparing names (a standard name compares as a number),
    /// rather than one hashed lookup per allowed name.
    pub(crate) fn capture(
        status: StatusCode,
        headers: &HeaderMap,
        allowed: &[HeaderName],
        body: Bytes,
    ) -> Self {
        let is_kept = |(name, _): &(&HeaderName, &HeaderValue)| allowed.contains(name);
        let count = headers.iter().filter(is_kept).count();
        let mut kept = headers.iter().filter(is_kept);
        // An iterator of known length (`Range` mapped) builds the `Arc`'s
        // slice in place; the filter alone would collect into a `Vec`
        // first and copy it.
        let headers = (0..count)
            .map(|_| {
                kept.next()
                    .expect("the same filter over the same map, counted above")
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        StoredResponse {
            status,
            headers,
            body,
        }
    }

    /// The stored status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The stored headers.
    pub fn headers(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> + '_ {
        self.headers.iter().map(|(name, value)| (name, value))
    }

    /// Bytes held (body and headers), for size accounting.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>()
    }

    /// The replay: the stored status, headers and body, plus
    /// `Idempotent-Replayed: true`.
    pub fn to_response(&self) -> Response<Bytes> {
        self.clone().into_response()
    }

    /// The replay, as [`to_response`](Self::to_response), taking the
    /// stored response by value: its body moves into the response instead
    /// of being cloned (a reference count that every replay of one record,
    /// on any thread, would otherwise update twice more).
    ///
    /// ```
    /// use http::StatusCode;
    /// use idemcache_http::StoredResponse;
    ///
    /// let stored = StoredResponse::new(StatusCode::CREATED, vec![], "{\"id\":1}");
    /// let replay = stored.into_response();
    /// assert_eq!(replay.headers()["idempotent-replayed"], "true");
    /// assert_eq!(replay.body().as_ref(), b"{\"id\":1}");
    /// ```
    pub fn into_response(self) -> Response<Bytes> {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        // Room for the replay marker and the `Content-Length` a server
        // adds: one short, and that insertion would reallocate the map.
        headers.reserve(self.headers.len() + 2);
        for (name, value) in self.headers.iter() {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
        response
    }
}

/// Why [`StoredResponse::from_bytes`] refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a stored response: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// The byte format's version tag.
const FORMAT: u8 = 1;

impl StoredResponse {
    /// A stable byte encoding, for stores of bytes (a Redis codec, say)
    /// without serde: a version byte, the status (`u16` big-endian), the
    /// header count (`u16`), each header as name length (`u16`), name,
    /// value length (`u32`), value, then the body to the end.
    ///
    /// ```
    /// use http::{StatusCode, header};
    /// use idemcache_http::StoredResponse;
    ///
    /// let stored = StoredResponse::new(
    ///     StatusCode::CREATED,
    ///     vec![(header::LOCATION, "/charges/1".parse().unwrap())],
    ///     "{}",
    /// );
    /// let bytes = stored.to_bytes();
    /// assert_eq!(StoredResponse::from_bytes(&bytes), Ok(stored));
    /// ```
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.size() + 6 * self.headers.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.extend_from_slice(&(self.headers.len() as u16).to_be_bytes());
        for (name, value) in self.headers.iter() {
            out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// The stored response that [`to_bytes`](Self::to_bytes) wrote.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for bytes of another format, truncated, or with an
    /// invalid status, header name or value; never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
            if bytes.len() < n {
                return Err(DecodeError("truncated"));
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Ok(head)
        }
        let mut rest = bytes;
        if take(&mut rest, 1)? != [FORMAT] {
            return Err(DecodeError("unknown format version"));
        }
        let status = u16::from_be_bytes(take(&mut rest, 2)?.try_into().expect("two bytes"));
        let status = StatusCode::from_u16(status).map_err(|_| DecodeError("invalid status"))?;
        let count = u16::from_be_bytes(take(&mut rest, 2)?.try_into().expect("two bytes"));
        let mut headers = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let len = u16::from_be_bytes(take(&mut rest, 2)?.try_into().expect("two bytes"));
            let name = HeaderName::from_bytes(take(&mut rest, usize::from(len))?)
                .map_err(|_| DecodeError("invalid header name"))?;
            let len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().expect("four bytes"));
            let len = usize::try_from(len).map_err(|_| DecodeError("truncated"))?;
            let value = HeaderValue::from_bytes(take(&mut rest, len)?)
                .map_err(|_| DecodeError("invalid header value"))?;
            headers.push((name, value));
        }
        Ok(StoredResponse::new(
            status,
            headers,
            Bytes::copy_from_slice(rest),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_truncation_of_an_encoding_is_an_error_not_a_panic() {
        let stored = StoredResponse::new(
            StatusCode::CREATED,
            vec![
                (http::header::LOCATION, HeaderValue::from_static("/x")),
                (http::header::ETAG, HeaderValue::from_static("\"1\"")),
            ],
            "body",
        );
        let bytes = stored.to_bytes();
        assert_eq!(StoredResponse::from_bytes(&bytes), Ok(stored));
        let header_end = bytes.len() - 4;
        for cut in 0..header_end {
            assert!(
                StoredResponse::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(StoredResponse::from_bytes(b"\x02").is_err());
    }
}

#[cfg(feature = "serde")]
mod serde_impl {
    use super::*;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The serialized form: plain data.
    #[derive(Serialize, Deserialize)]
    struct Plain {
        status: u16,
        headers: Vec<(String, Bytes)>,
        body: Bytes,
    }

    impl Serialize for StoredResponse {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            Plain {
                status: self.status.as_u16(),
                headers: self
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
                    .collect(),
                body: self.body.clone(),
            }
            .serialize(serializer)
        }
    }

    impl<'de> Deserialize<'de> for StoredResponse {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let plain = Plain::deserialize(deserializer)?;
            let status = StatusCode::from_u16(plain.status).map_err(D::Error::custom)?;
            let headers = plain
                .headers
                .into_iter()
                .map(|(name, value)| {
                    let name = HeaderName::from_bytes(name.as_bytes()).map_err(D::Error::custom)?;
                    let value = HeaderValue::from_maybe_shared(value).map_err(D::Error::custom)?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, D::Error>>()?;
            Ok(StoredResponse::new(status, headers, plain.body))
        }
    }
}
