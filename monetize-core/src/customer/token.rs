//! [`CustomerToken`]: a customer's name derived from credentials, for identification
//! layers that resolve the same credentials on every request.

use std::fmt;

/// A 128-bit name for a customer, derived by an identification layer from credentials it
/// has verified (for example a keyed MAC of an API key, combined with the version of the
/// key directory that maps it), so that [`Engine::resolve_token`] can answer the next
/// request with the same credentials from this thread's cache, without looking the key or
/// the customer id up again.
///
/// **Equal tokens must mean the same customer.** Derive tokens from a secret-keyed
/// pseudo-random function of the credentials, and change them whenever what the
/// credentials map to may have changed (a key revoked or re-assigned): a token that still
/// names a customer after its key was revoked keeps letting that key in on threads that
/// cached it. `monetize-tower`'s key directory does this for API keys and bearer tokens.
///
/// A token says nothing about a customer by itself; its `Debug` shows none of it.
///
/// [`Engine::resolve_token`]: crate::Engine::resolve_token
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustomerToken(u128);

impl CustomerToken {
    /// A token from 128 bits that satisfy the contract above.
    pub const fn new(bits: u128) -> Self {
        Self(bits)
    }

    /// The token's bits.
    pub const fn bits(self) -> u128 {
        self.0
    }
}

impl fmt::Debug for CustomerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomerToken(..)")
    }
}
