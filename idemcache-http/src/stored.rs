//! What is kept of a response, and how a replay is rebuilt from it.

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
/// layer; with the `serde` feature it serializes, so the core's snapshot
/// files can keep it across restarts.
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
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StoredResponse {
    status: u16,
    headers: Vec<(String, Bytes)>,
    body: Bytes,
}

impl StoredResponse {
    /// A stored response from its parts (header names are kept as given).
    pub fn new(
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: impl Into<Bytes>,
    ) -> Self {
        StoredResponse {
            status: status.as_u16(),
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.as_str().to_owned(), Bytes::copy_from_slice(value.as_bytes())))
                .collect(),
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
            .flat_map(|name| headers.get_all(name).iter().map(move |v| (name.clone(), v.clone())))
            .collect();
        StoredResponse::new(status, kept, body)
    }

    /// The stored status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The stored body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The stored headers, as valid names and values (a damaged entry from
    /// a file is skipped).
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        self.headers.iter().filter_map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let value = HeaderValue::from_maybe_shared(value.clone()).ok()?;
            Some((name, value))
        })
    }

    /// Bytes held (body and headers), for size accounting.
    pub fn size(&self) -> usize {
        self.body.len() + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
    }

    /// The replay: the stored status, headers and body, plus
    /// `Idempotent-Replayed: true`.
    pub fn to_response(&self) -> Response<Bytes> {
        let mut response = Response::new(self.body.clone());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        for (name, value) in self.headers() {
            headers.append(name, value);
        }
        headers.insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
        response
    }
}
