//! Errors of setting providers up (configuration, credentials, meters).

use std::fmt;

/// Why providers could not be set up. Each variant says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvidersError {
    /// A provider section is invalid: fix the named field.
    #[error(transparent)]
    Config(#[from] FieldError),
    /// The configuration text is not valid TOML or JSON: the message names the place.
    #[error("cannot parse provider configuration ({format}): {message}")]
    Parse {
        /// `toml` or `json`.
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// The configuration file could not be read.
    #[error("cannot read provider configuration {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An environment variable named in the configuration is not set: set it or change the
    /// name in the file. (The value is never printed.)
    #[error("environment variable `{var}` named by `{field}` is not set")]
    MissingEnv {
        /// The variable.
        var: String,
        /// The configuration field naming it.
        field: String,
    },
    /// The provider kind was compiled out: enable the cargo feature.
    #[error("provider kind `{kind}` needs the `{kind}` cargo feature of monetize-providers")]
    FeatureDisabled {
        /// `stripe`, `recurly` or `chargebee`.
        kind: String,
    },
    /// A meter cannot be billed honestly by this provider (an aggregation it cannot
    /// represent): change the meter or the provider-side formula.
    #[error("provider `{provider}` cannot bill meter `{meter}`: {problem}")]
    Meter {
        /// The provider's name.
        provider: String,
        /// The meter.
        meter: String,
        /// What is wrong.
        problem: String,
    },
    /// The HTTP client could not be built (TLS roots missing, say).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// A configuration value that cannot be used, naming the field, the value and the problem
/// (the same shape as `monetize_core::ConfigError`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct FieldError {
    /// The field's path, such as `providers[0].meters.api_calls.formula`.
    pub field: String,
    /// The offending value as written (empty when a value is missing).
    pub value: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl FieldError {
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
}

impl fmt::Display for FieldError {
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
