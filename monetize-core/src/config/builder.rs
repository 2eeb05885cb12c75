//! Building a [`Config`] in code.

use super::{Config, MeterConfig, OverflowPolicy, PlanConfig, ProviderRouteConfig, RuleConfig};

/// Builds a [`Config`]; `build` returns the same structure a file would give.
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Sets the instance name.
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        self.config.instance = name.into();
        self
    }

    /// Adds a meter.
    pub fn meter(mut self, m: MeterConfig) -> Self {
        self.config.meters.push(m);
        self
    }

    /// Adds a plan.
    pub fn plan(mut self, p: PlanConfig) -> Self {
        self.config.plans.push(p);
        self
    }

    /// Adds a rule (the first call replaces the default rules).
    pub fn rule(mut self, r: RuleConfig) -> Self {
        self.config.rules.get_or_insert_with(Vec::new).push(r);
        self
    }

    /// Sets the time zone of calendar quota periods (an IANA name; `UTC` by default).
    pub fn time_zone(mut self, name: impl Into<String>) -> Self {
        self.config.time_zone = name.into();
        self
    }

    /// Sets the default plan of new customers.
    pub fn default_plan(mut self, plan: impl Into<String>) -> Self {
        self.config.customers.default_plan = Some(plan.into());
        self
    }

    /// Caps the number of customers in memory.
    pub fn max_customers(mut self, max: usize, overflow: OverflowPolicy) -> Self {
        self.config.customers.max = max;
        self.config.customers.overflow = overflow;
        self
    }

    /// Sets checkpoint interval and report window.
    pub fn reporting(mut self, checkpoint_interval_ms: u64, window_secs: u64) -> Self {
        self.config.reporting.checkpoint_interval_ms = checkpoint_interval_ms;
        self.config.reporting.window_secs = window_secs;
        self
    }

    /// Adds a provider route.
    pub fn provider(mut self, route: ProviderRouteConfig) -> Self {
        self.config.reporting.providers.push(route);
        self
    }

    /// The configuration (validated when an engine is built from it).
    pub fn build(self) -> Config {
        self.config
    }
}
