//! Errors of the core crate.

use std::fmt;

use crate::id::IdError;

/// A configuration value that cannot be used, naming the field, the value and the problem.
///
/// Fix the named field and load the configuration again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ConfigError {
    /// The field's path, such as `meters[1].filter.status[0]`.
    pub field: String,
    /// The offending value as written (empty when a value is missing).
    pub value: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(
        field: impl Into<String>,
        value: impl fmt::Display,
        problem: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    pub(crate) fn id(field: impl Into<String>, value: &str, e: IdError) -> Self {
        Self::new(field, value, e.to_string())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "config field `{}`: {}", self.field, self.problem)
        } else {
            write!(
                f,
                "config field `{}` = `{}`: {}",
                self.field, self.value, self.problem
            )
        }
    }
}

/// Errors from the engine's public operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The configuration is invalid: fix the named field.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configuration file could not be parsed: the message names the line and column.
    #[error("cannot parse config {format}: {message}")]
    Parse {
        /// `toml` or `json`.
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// A configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An identifier is malformed: it names what was wrong.
    #[error("invalid {what} `{value}`: {source}")]
    Id {
        /// `customer`, `meter` or `plan`.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is invalid.
        source: IdError,
    },
    /// No meter with this name is configured: use one of the names in the config.
    #[error("unknown meter `{0}`")]
    UnknownMeter(String),
    /// No plan with this name is configured: use one of the names in the config.
    #[error("unknown plan `{0}`")]
    UnknownPlan(String),
    /// The customer cap is reached and the overflow policy is `reject`: raise
    /// `customers.max`, evict idle customers, or choose the `overflow` policy.
    #[error("customer cap of {max} reached; `{customer}` was not admitted")]
    CustomerCapReached {
        /// The cap.
        max: usize,
        /// The customer refused.
        customer: String,
    },
    /// The customer was being evicted and re-admitted by another thread at the same
    /// instant, so no handle could be taken (not expected in practice): retry.
    #[error("customer `{customer}` changed while being admitted; retry")]
    CustomerBusy {
        /// The customer.
        customer: String,
    },
}
