//! Shared test helpers.

pub mod billing_mock;
pub mod crash_child;
pub mod http;
pub mod notify;
pub mod quickstart;
pub mod smtp;
pub mod spool;

/// The README's code examples, compiled (and the first one run) as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
