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
    /// `allowed`, in order.
    pub(crate) fn capture(
        status: StatusCode,
        headers: &HeaderMap,
        allowed: &[HeaderName],
        body: Bytes,
    ) -> Self {
        let kept = allowed
            .iter()
            .flat_map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(move |v| (name.clone(), v.clone()))
            })
            .collect();
        StoredResponse::new(status, kept, body)
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
        let mut response = Response::new(self.body.clone());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.reserve(self.headers.len() + 1);
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
