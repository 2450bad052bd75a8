//! Model-based, crash and file-backend tests of the composites.
//!
//! One test binary (modules below) keeps link time down. Case counts are
//! small by default so the suite stays fast in debug builds; raise them
//! with `PROPTEST_CASES=1000 cargo test -p raid --test volume`.

mod clone_model;
mod common;
mod corrupt;
mod crash;
mod crash_clone;
mod crash_raid1;
mod file_backend;
mod raid1_model;
mod stripe_model;
mod thin_model;
