//! What the reporter is told: the providers it reports to ([`ProviderRoute`]) and its
//! intervals, timeouts and retries ([`ReporterOptions`]).

use super::*;

/// Where a provider's usage goes and how often.
#[derive(Clone)]
#[non_exhaustive]
pub struct ProviderRoute {
    /// The provider.
    pub provider: Arc<dyn BillingProvider>,
    /// How often closed windows are sent (default 10 s).
    pub report_interval: Duration,
    /// The meters it takes; `None` (the default) for all.
    pub meters: Option<Vec<MeterId>>,
}

impl std::fmt::Debug for ProviderRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRoute")
            .field("provider", &self.provider.name())
            .field("report_interval", &self.report_interval)
            .field("meters", &self.meters)
            .finish()
    }
}

impl ProviderRoute {
    /// A route taking every meter, reported every 10 s.
    pub fn new(provider: Arc<dyn BillingProvider>) -> Self {
        Self {
            provider,
            report_interval: Duration::from_secs(10),
            meters: None,
        }
    }

    /// Sets how often closed windows are sent.
    pub fn with_report_interval(mut self, every: Duration) -> Self {
        self.report_interval = every;
        self
    }

    /// Restricts the route to `meters`.
    pub fn with_meters(mut self, meters: Vec<MeterId>) -> Self {
        self.meters = Some(meters);
        self
    }
}

/// Settings of a [`Reporter`]. Start from `Default` and use the setters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReporterOptions {
    /// How often usage cells are checkpointed into the spool (default 1 s). This is the
    /// most usage a `kill -9` can lose (see the module docs).
    pub checkpoint_interval: Duration,
    /// Length of a report window (default 60 s; whole seconds, at least 1).
    pub window: Duration,
    /// The longest one provider call may take before it counts as failed (default 10 s).
    /// A timed-out call may still have reached the provider: the retry carries the same
    /// idempotency keys.
    pub call_timeout: Duration,
    /// The first retry delay within a round (default 200 ms).
    pub min_backoff: Duration,
    /// The longest retry delay within a round (default 30 s).
    pub max_backoff: Duration,
    /// Retries of one batch within a round (default 4); what is left is retried next round.
    pub max_retries: usize,
    /// How long [`ReporterHandle::shutdown`] keeps trying (default 30 s).
    pub shutdown_timeout: Duration,
    /// How long acknowledged records are kept for audit (default 30 days).
    pub audit_retention: Duration,
    /// How long a provider may keep failing (timeouts, 5xx, 401, 429: every call of a
    /// streak) before [`EventKind::ProviderFailing`] is raised, once per streak (default
    /// 15 minutes).
    pub provider_failing_after: Duration,
}

impl Default for ReporterOptions {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(1),
            window: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_retries: 4,
            shutdown_timeout: Duration::from_secs(30),
            audit_retention: Duration::from_secs(30 * 24 * 3600),
            provider_failing_after: Duration::from_secs(15 * 60),
        }
    }
}

impl From<&crate::config::ReportingConfig> for ReporterOptions {
    /// The checkpoint interval and window length of a configuration; everything else at
    /// its default.
    fn from(config: &crate::config::ReportingConfig) -> Self {
        Self::default()
            .with_checkpoint_interval(Duration::from_millis(config.checkpoint_interval_ms))
            .with_window(Duration::from_secs(config.window_secs))
    }
}

impl ProviderRoute {
    /// A route for `provider` as configured: the report interval and meters of the entry
    /// named like the provider, or every meter every 10 s when there is none.
    pub fn from_config(
        provider: Arc<dyn BillingProvider>,
        config: &crate::config::ReportingConfig,
    ) -> Self {
        let route = Self::new(provider);
        let Some(entry) = config
            .providers
            .iter()
            .find(|p| p.name == route.provider.name())
        else {
            return route;
        };
        let meters = entry.meters.as_ref().map(|names| {
            names
                .iter()
                .filter_map(|n| match MeterId::new(n) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(meter = %n, error = %e, "ignoring an invalid meter name");
                        None
                    }
                })
                .collect()
        });
        Self {
            report_interval: Duration::from_millis(entry.report_interval_ms),
            meters,
            ..route
        }
    }
}

impl ReporterOptions {
    /// Sets [`Self::provider_failing_after`].
    pub fn with_provider_failing_after(mut self, after: Duration) -> Self {
        self.provider_failing_after = after;
        self
    }

    /// Sets [`Self::checkpoint_interval`].
    pub fn with_checkpoint_interval(mut self, every: Duration) -> Self {
        self.checkpoint_interval = every;
        self
    }

    /// Sets [`Self::window`].
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets [`Self::call_timeout`].
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets [`Self::min_backoff`].
    pub fn with_min_backoff(mut self, delay: Duration) -> Self {
        self.min_backoff = delay;
        self
    }

    /// Sets [`Self::max_backoff`].
    pub fn with_max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// Sets [`Self::max_retries`].
    pub fn with_max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }

    /// Sets [`Self::shutdown_timeout`].
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets [`Self::audit_retention`].
    pub fn with_audit_retention(mut self, retention: Duration) -> Self {
        self.audit_retention = retention;
        self
    }

    pub(super) fn window_secs(&self) -> u64 {
        self.window.as_secs().max(1)
    }

    /// Checks the options as the configuration file does.
    pub(super) fn validate(&self) -> Result<(), ReporterError> {
        let secs = self.window.as_secs();
        if self.window.subsec_nanos() != 0 || !(1..=MAX_WINDOW_SECS).contains(&secs) {
            return Err(ReporterError::InvalidOptions {
                field: "window",
                reason: format!(
                    "{:?}: a report window is a whole number of seconds from 1 to {MAX_WINDOW_SECS}",
                    self.window
                ),
            });
        }
        if self.checkpoint_interval.is_zero() {
            return Err(ReporterError::InvalidOptions {
                field: "checkpoint_interval",
                reason: "must be above zero".into(),
            });
        }
        Ok(())
    }

    pub(super) fn backoff(&self) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff.max(self.min_backoff))
            .with_max_times(self.max_retries)
            .build()
    }
}
