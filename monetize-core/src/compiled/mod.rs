//! The compiled configuration: a validated [`Config`] turned into what the engine runs on
//! (meters, plans, rules laid out for the request path), and the cell that holds the
//! current one. Above `config` (the serde types) and `meter`, `customer` and `govern`
//! (what it compiles them into); only the engine and metering read it.

pub(crate) mod cell;
pub(crate) mod validate;

use crate::config::Config;

impl Config {
    /// Checks the whole configuration without building an engine.
    pub fn validate(&self) -> Result<(), crate::error::ConfigError> {
        validate::compile(self, &Default::default()).map(|_| ())
    }
}
