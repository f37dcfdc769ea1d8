//! The body type of requests the layer hands on and responses it returns.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;

/// A body of [`Bytes`]: a buffered request the layer read or a stored
/// response it replays (held as is), or the inner service's own body
/// passed through (boxed).
///
/// ```
/// use http_body::Body as _;
/// use idemcache_http::Body;
///
/// let body = Body::from_bytes("hello".into());
/// assert_eq!(body.size_hint().exact(), Some(5));
/// ```
pub struct Body(Inner);

enum Inner {
    /// Bytes the layer holds, unboxed (a replay, a buffered request or
    /// response): `None` once sent.
    Full(Option<Bytes>),
    /// Any other body.
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    /// Wraps any body of `Bytes`.
    pub fn new<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body(Inner::Boxed(body.map_err(Into::into).boxed_unsync()))
    }

    /// A body of `bytes`, all at once (not boxed).
    pub fn from_bytes(bytes: Bytes) -> Body {
        // As `http_body_util::Full`: an empty body sends no frame.
        Body(Inner::Full(Some(bytes).filter(|bytes| !bytes.is_empty())))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Inner::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Boxed(body) => body.size_hint(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("size_hint", &http_body::Body::size_hint(self))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[tokio::test]
    async fn bytes_come_out_as_one_frame_then_the_body_ends() {
        let mut body = Body::from_bytes(Bytes::from_static(b"hello"));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let frame = body.frame().await.expect("a frame").expect("no error");
        assert_eq!(frame.into_data().expect("data"), "hello");
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn empty_bytes_send_no_frame() {
        let mut body = Body::from_bytes(Bytes::new());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
    }
}
