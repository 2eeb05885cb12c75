//! Errors when building the layer or its identification strategies.

/// Something given to a builder cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The header name is not a valid HTTP header name: use letters, digits and `-`.
    #[error("`{0}` is not a valid HTTP header name")]
    InvalidHeaderName(String),
    /// A key digest is not 64 hexadecimal characters (a SHA-256 digest).
    #[error("a key digest must be 64 hexadecimal characters (a SHA-256 digest)")]
    InvalidDigest,
    /// An exempt route does not start with `/`, or has `*` elsewhere than at the end.
    #[error("exempt route `{0}` must start with `/` and may only end with `*`")]
    InvalidRoute(String),
    /// A route template of a [`RouteTable`](crate::RouteTable) is not valid or conflicts
    /// with another one (the syntax is axum's: `/users/{id}`, `/files/{*path}`).
    #[error("route template `{template}`: {problem}")]
    InvalidTemplate {
        /// The template as given.
        template: String,
        /// What is wrong with it.
        problem: String,
    },
}
