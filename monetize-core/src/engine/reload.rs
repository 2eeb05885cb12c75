//! Reloading the configuration while running: what may change (filters, prices, plans by
//! id) and what is refused, by name (meters, what they read, the time zone, the instance).

use super::*;

impl Engine {
    /// Replaces plans, rules and reporting settings without a restart. Plans are matched
    /// by id: they may be reordered, changed or added, and a customer stays on the plan
    /// of the same id; removing a plan is refused (naming it). Meters cannot
    /// change while running (usage cells are laid out by meter): a config whose meters
    /// differ in ids or aggregations, or read other parts of an exchange
    /// ([`Engine::exchange_needs`]), is refused, naming `meters`. Meter filters and values
    /// may change otherwise; requests in flight finish under the configuration they
    /// started with ([`Engine::meter_response`]).
    pub fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let compiled = compile(&config, &self.inner.predicates)?;
        let cur = &*self.inner.metering.config.load();
        let same = cur.meters.len() == compiled.meters.len()
            && cur
                .meters
                .iter()
                .zip(&compiled.meters)
                .all(|(a, b)| a.id == b.id && a.aggregation == b.aggregation);
        if !same {
            return Err(ConfigError::new(
                "meters",
                compiled.meters.len(),
                "meters cannot change while the engine runs; restart with the new meters",
            ));
        }
        if compiled.needs != cur.needs {
            return Err(ConfigError::new(
                "meters",
                needs_change(&cur.needs, &compiled.needs),
                "what the meters read (request or response headers, bytes, body fields, handler-reported quantities) cannot change while the engine runs: HTTP layers keep only what the meters read when they are built; restart with the new meters",
            ));
        }
        if compiled.calendar != cur.calendar {
            return Err(ConfigError::new(
                "time_zone",
                compiled.calendar.name(),
                "the time zone cannot change while the engine runs (quota periods would move); restart with it",
            ));
        }
        if compiled.instance != self.inner.instance {
            return Err(ConfigError::new(
                "instance",
                &*compiled.instance,
                "the instance name cannot change while the engine runs (it is part of idempotency keys)",
            ));
        }
        // Plans keep their positions (customers hold a plan by position): a reload that
        // reorders plans moves nobody; one that drops a plan is refused, naming it.
        let compiled = compile_after(&config, &self.inner.predicates, Some(cur))?;
        self.inner.metering.config.store(compiled);
        Ok(())
    }

    /// The checkpoint interval and report window from the config.
    pub fn reporting(&self) -> crate::config::ReportingConfig {
        self.inner.metering.config.load().reporting.clone()
    }
}

/// What differs between two [`ExchangeNeeds`], for a refused reload: `"response_bytes:
/// false -> true, ..."`.
pub(super) fn needs_change(old: &ExchangeNeeds, new: &ExchangeNeeds) -> String {
    let mut out = Vec::new();
    let mut flag = |name: &str, a: bool, b: bool| {
        if a != b {
            out.push(format!("{name}: {a} -> {b}"));
        }
    };
    flag("request_headers", old.request_headers, new.request_headers);
    flag(
        "response_headers",
        old.response_headers,
        new.response_headers,
    );
    flag("request_bytes", old.request_bytes, new.request_bytes);
    flag("response_bytes", old.response_bytes, new.response_bytes);
    flag("query", old.query, new.query);
    flag("reported", old.reported, new.reported);
    flag(
        "request_at_response",
        old.request_at_response,
        new.request_at_response,
    );
    if old.json_capture != new.json_capture {
        out.push(format!(
            "json_capture: {:?} -> {:?}",
            old.json_capture, new.json_capture
        ));
    }
    out.join(", ")
}
