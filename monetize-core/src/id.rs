//! Identifiers: hashed and compared as their string; ids up to 23 bytes (such as
//! `cus_4f2a9c81d3e07b`) are stored inline, so a map lookup compares them without
//! following a pointer, and cloning them copies 24 bytes instead of touching a
//! reference count.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;

/// The longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 200;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The identifier is empty: give it at least one visible character.
    #[error("identifier is empty")]
    Empty,
    /// The identifier is longer than [`MAX_ID_LEN`] bytes: shorten it.
    #[error("identifier is {0} bytes long, the limit is {MAX_ID_LEN}")]
    TooLong(usize),
    /// The identifier contains a control character or white space: remove it.
    #[error("identifier contains a control or white-space character at byte {0}")]
    BadChar(usize),
}

fn check(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    if let Some((i, _)) = s
        .char_indices()
        .find(|(_, c)| c.is_control() || c.is_whitespace())
    {
        return Err(IdError::BadChar(i));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(SmolStr);

        impl $name {
            /// Parses an identifier: non-empty, at most [`MAX_ID_LEN`] bytes, no control
            /// characters or white space.
            pub fn new(s: impl AsRef<str>) -> Result<Self, IdError> {
                let s = s.as_ref();
                check(s)?;
                Ok(Self(SmolStr::new(s)))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.0.as_str()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0.as_str())
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.0.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Who a request belongs to and who is billed for it.
    CustomerId
);
id_type!(
    /// The name of a meter (`api_calls`, `tokens`, `egress_bytes`).
    MeterId
);
id_type!(
    /// The name of a plan (`free`, `pro`, `prepaid`).
    PlanId
);

/// A meter's position in the engine's meter table; resolved once at start-up so that
/// recording costs an index, not a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterIndex(pub(crate) u16);

impl MeterIndex {
    /// The position as a `usize`.
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(CustomerId::new(""), Err(IdError::Empty));
        assert_eq!(CustomerId::new("a b"), Err(IdError::BadChar(1)));
        assert_eq!(CustomerId::new("x".repeat(201)), Err(IdError::TooLong(201)));
        assert_eq!(CustomerId::new("cus_1").unwrap().as_str(), "cus_1");
    }

    #[test]
    fn borrows_as_str_for_lookups() {
        let mut m = std::collections::HashMap::new();
        m.insert(CustomerId::new("c1").unwrap(), 1);
        assert_eq!(m.get("c1"), Some(&1));
    }
}
