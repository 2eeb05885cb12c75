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
}
