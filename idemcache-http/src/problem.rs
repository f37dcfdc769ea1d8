//! RFC 9457 problem details for the layer's own answers.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Where the problem types are described.
const TYPE_BASE: &str = "https://docs.rs/idemcache-http/latest/idemcache_http/problems/";

/// A problem the layer answers with, as `application/problem+json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// 400: the key is missing or malformed.
    BadKey,
    /// 422 (or the configured status): the key was used for another request.
    KeyReused,
    /// 409: a request with this key is in progress.
    InProgress,
    /// 503: the store is full or unavailable (fail closed).
    Unavailable,
    /// 413: the request body is over the cap.
    TooLarge,
    /// 400: the request body could not be read.
    BadBody,
    /// 503: the server is shutting down.
    ShuttingDown,
    /// 500: the handler failed without a response.
    HandlerFailed,
}

impl Problem {
    /// The problem's `title`: the draft's wording where it has one.
    pub fn title(self) -> &'static str {
        match self {
            Problem::BadKey => "Idempotency-Key is missing or invalid",
            Problem::KeyReused => "Idempotency-Key is already used",
            Problem::InProgress => "A request is outstanding for this Idempotency-Key",
            Problem::Unavailable => "Idempotency store unavailable",
            Problem::TooLarge => "Request body too large",
            Problem::BadBody => "Request body could not be read",
            Problem::ShuttingDown => "Server shutting down",
            Problem::HandlerFailed => "The request failed",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Problem::BadKey => "bad-key",
            Problem::KeyReused => "key-reused",
            Problem::InProgress => "in-progress",
            Problem::Unavailable => "unavailable",
            Problem::TooLarge => "too-large",
            Problem::BadBody => "bad-body",
            Problem::ShuttingDown => "shutting-down",
            Problem::HandlerFailed => "handler-failed",
        }
    }

    /// The response: `status`, `Content-Type: application/problem+json`,
    /// and a body with `type`, `title`, `status` and `detail`.
    pub fn response(self, status: StatusCode, detail: &str) -> Response<Bytes> {
        let body = format!(
            r#"{{"type":"{TYPE_BASE}{}","title":"{}","status":{},"detail":"{}"}}"#,
            self.slug(),
            self.title(),
            status.as_u16(),
            json_escape(detail)
        );
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// `s` as the inside of a JSON string.
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_valid_json_with_the_four_members() {
        let response =
            Problem::KeyReused.response(StatusCode::UNPROCESSABLE_ENTITY, "a \"quoted\" detail\n");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["status"], 422);
        assert_eq!(body["title"], "Idempotency-Key is already used");
        assert_eq!(body["detail"], "a \"quoted\" detail\n");
        assert!(body["type"].as_str().unwrap().ends_with("key-reused"));
    }
}
