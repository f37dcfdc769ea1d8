//! Tests that live inside the crate because they use test-only hooks
//! (`Cache::__is_stored`, compiled under `cfg(test)` and `cfg(fuzzing)`
//! only), so an integration test in `tests/` cannot call them.
//!
//! The reference model is shared with the `ops` fuzz target, which
//! includes `model.rs` by path; both name the crate `idemcache`.

mod model;
mod model_based;
