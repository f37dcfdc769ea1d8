//! # idemcache-http
//!
//! An `Idempotency-Key` layer for tower and axum servers, speaking the IETF
//! draft (`draft-ietf-httpapi-idempotency-key-header`), on any
//! [`idemcache::store::Store`]: retried requests with the same key run
//! once, and their retries replay the first response.
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod client;
mod body;
mod config;
mod event;
mod key;
#[cfg(feature = "tower")]
mod layer;
mod problem;
mod shutdown;
mod stored;

pub use body::Body;
pub use config::{ConfigError, MismatchStatus, default_fingerprint};
pub use event::{Event, EventKind};
pub use key::{KeyError, MAX_KEY_LEN, Scope, ScopedKey, parse_key};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{IdempotencyLayer, IdempotencyLayerBuilder, IdempotencyService};
pub use problem::Problem;
pub use shutdown::ShutdownHandle;
pub use stored::{DEFAULT_STORED_HEADERS, StoredResponse};

/// The errors bodies carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

