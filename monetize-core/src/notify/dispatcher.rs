//! The dispatcher: matches events to routes, deduplicates them through the
//! [`StateStore`], renders them and delivers them in the background, one bounded queue
//! and one worker per channel.
//!
//! [`Dispatcher::dispatch`] never waits: it puts the event on a bounded queue (full: the
//! event is dropped, counted, and logged once). A background task routes each event: for
//! each matching route it claims the dedup mark (`StateStore::mark_once`, atomic, so a
//! burst of identical events yields one notification; on disk with `RedbStore`, so a
//! restart does not send again), renders the template and puts the notification on its
//! channel's bounded queue.
//!
//! Each channel's worker tries a notification and, on a transient failure, schedules the
//! retry by the channel's [`RetryPolicy`] (exponential backoff with jitter by default;
//! the Standard Webhooks schedule for signed webhooks), honouring the service's
//! `Retry-After`: a timer puts the retry back on the channel's worker when it is due, so
//! a retry hours away holds up no other notification. A notification that fails for
//! good is counted ([`ChannelStats::failed`]) and raised as
//! [`EventKind::NotificationFailed`](crate::EventKind::NotificationFailed); a channel
//! whose policy disables it on failure then receives nothing more (counted in
//! [`ChannelStats::skipped`]) until [`Dispatcher::enable`]. A slow or broken channel never
//! holds up another channel. Pending retries live in memory: a restart forgets them.
//!
//! The dedup mark is a claim: it is set before delivery (one notification per burst, and
//! a notification in flight during a `kill -9` is not sent again after the restart), and
//! given back ([`StateStore::unmark`]) when the notification fails for good, is dropped
//! from a full channel queue or skipped by a disabled channel, so that a later crossing
//! in the same period sends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::config::{CUSTOMER, NotifyConfig, NotifyConfigError, RouteConfig};
use super::dedup;
use super::retry::{Delays, RetryPolicy};
use super::template::{self, Templates};
use super::{CustomerDirectory, Notification, Notifier, NotifyError};
use crate::engine::Engine;
use crate::event::{Event, EventKind};
use crate::store::{MemoryStore, StateStore};

/// A hook told of every notification that failed for good.
pub type FailureHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Builds a [`Dispatcher`]: the configuration, the channels by name, the store for dedup
/// marks, optionally a customer directory.
pub struct DispatcherBuilder {
    config: NotifyConfig,
    channels: BTreeMap<String, Arc<dyn Notifier>>,
    policies: BTreeMap<String, RetryPolicy>,
    store: Option<Arc<dyn StateStore>>,
    directory: Option<Arc<dyn CustomerDirectory>>,
    on_failure: Option<FailureHook>,
}

impl std::fmt::Debug for DispatcherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherBuilder")
            .field("routes", &self.config.routes.len())
            .field("channels", &self.channels.keys().collect::<Vec<_>>())
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl DispatcherBuilder {
    /// Adds a channel under `name` (the name routes use).
    pub fn channel(mut self, name: impl Into<String>, channel: Arc<dyn Notifier>) -> Self {
        self.channels.insert(name.into(), channel);
        self
    }

    /// Retries the channel `name` by `policy`, instead of the channel's own
    /// ([`Notifier::retry_policy`]) or the configuration's exponential backoff.
    pub fn retry_policy(mut self, name: impl Into<String>, policy: RetryPolicy) -> Self {
        self.policies.insert(name.into(), policy);
        self
    }

    /// Keeps dedup marks in `store` (default: in memory, forgotten on restart; give the
    /// engine's `RedbStore` so that a restart does not send again).
    pub fn store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Asks `directory` for customers' addresses (before the configuration's
    /// `recipients`).
    pub fn directory(mut self, directory: Arc<dyn CustomerDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Calls `hook` with the `NotificationFailed` event of each notification that failed
    /// for good (the event is also dispatched to routes matching `notification_failed`).
    pub fn on_failure(mut self, hook: FailureHook) -> Self {
        self.on_failure = Some(hook);
        self
    }

    /// Checks the configuration (routes, channels, templates: compiled and tried with
    /// sample values) and starts the background tasks. Call it inside a tokio runtime.
    pub fn start(mut self) -> Result<Dispatcher, NotifyConfigError> {
        let config = self.config;
        config.validate()?;
        for r in &config.routes {
            if !self.channels.contains_key(&r.channel) {
                return Err(NotifyConfigError::UnknownChannel {
                    route: r.name.clone(),
                    channel: r.channel.clone(),
                });
            }
        }
        let templates = Templates::compile(&config)?;
        let cap = config.queue_capacity;
        let default_policy = RetryPolicy::exponential(
            config.max_retries,
            Duration::from_millis(config.retry_min_ms),
            Duration::from_millis(config.retry_max_ms),
        );
        let (intake, intake_rx) = mpsc::channel(cap);
        let mut lanes = BTreeMap::new();
        let mut workers = Vec::new();
        for (name, channel) in self.channels {
            let (tx, rx) = mpsc::channel(cap);
            let policy = self
                .policies
                .remove(&name)
                .or_else(|| channel.retry_policy())
                .unwrap_or_else(|| default_policy.clone());
            lanes.insert(
                name.clone(),
                Lane {
                    tx,
                    full_logged: AtomicBool::new(false),
                    policy,
                    disabled: AtomicBool::new(false),
                    stats: LaneCounters::default(),
                },
            );
            workers.push((name, channel, rx));
        }
        let inner = Arc::new(Inner {
            templates,
            store: self
                .store
                .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn StateStore>),
            directory: self.directory,
            on_failure: self.on_failure,
            intake,
            intake_full_logged: AtomicBool::new(false),
            lanes,
            pending: AtomicU64::new(0),
            stats: Counters::default(),
            config,
        });
        tokio::spawn(route_events(Arc::downgrade(&inner), intake_rx));
        for (name, channel, rx) in workers {
            tokio::spawn(deliver(Arc::downgrade(&inner), name, channel, rx));
        }
        Ok(Dispatcher { inner })
    }
}

/// Routes events to channels in the background (see the module docs). Cheap to clone;
/// the background tasks end when the last clone is dropped.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: NotifyConfig,
    templates: Templates,
    store: Arc<dyn StateStore>,
    directory: Option<Arc<dyn CustomerDirectory>>,
    on_failure: Option<FailureHook>,
    intake: mpsc::Sender<Event>,
    intake_full_logged: AtomicBool,
    lanes: BTreeMap<String, Lane>,
    /// Events and notifications accepted and not yet finished ([`Dispatcher::idle`]).
    pending: AtomicU64,
    stats: Counters,
}

/// One channel: its queue, retry policy, state and counters.
struct Lane {
    tx: mpsc::Sender<Notification>,
    full_logged: AtomicBool,
    policy: RetryPolicy,
    disabled: AtomicBool,
    stats: LaneCounters,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    deduplicated: AtomicU64,
    sent: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
struct LaneCounters {
    sent: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    skipped: AtomicU64,
}

/// What the dispatcher did so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatcherStats {
    /// Events accepted by [`Dispatcher::dispatch`].
    pub received: u64,
    /// Notifications not sent because their dedup mark was already set.
    pub deduplicated: u64,
    /// Notifications delivered.
    pub sent: u64,
    /// Retries scheduled (one notification may be retried several times).
    pub retried: u64,
    /// Notifications that failed for good (after retries, or refused), or could not be
    /// prepared (no address, store unavailable).
    pub failed: u64,
    /// Events or notifications dropped because a queue was full.
    pub dropped: u64,
    /// The same counts per channel, by the name routes use.
    pub channels: BTreeMap<String, ChannelStats>,
}

/// What the dispatcher did with one channel's notifications.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Notifications delivered.
    pub sent: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Notifications that failed for good (after retries, or refused), or could not be
    /// prepared for this channel (no address, template, store).
    pub failed: u64,
    /// Notifications dropped because the channel's queue was full.
    pub dropped: u64,
    /// Notifications not tried because the channel was disabled.
    pub skipped: u64,
    /// The channel is disabled (its policy disables it when a notification fails for
    /// good): nothing is sent to it until [`Dispatcher::enable`].
    pub disabled: bool,
}

impl Dispatcher {
    /// A builder over `config`.
    pub fn builder(config: NotifyConfig) -> DispatcherBuilder {
        DispatcherBuilder {
            config,
            channels: BTreeMap::new(),
            policies: BTreeMap::new(),
            store: None,
            directory: None,
            on_failure: None,
        }
    }

    /// Hands an event to the background tasks; never waits. When the queue is full the
    /// event is dropped, counted in [`DispatcherStats::dropped`] and logged (once).
    pub fn dispatch(&self, event: Event) {
        self.inner.dispatch(event);
    }

    /// Dispatches every event pending in the engine's queue; returns how many.
    pub fn take_from(&self, engine: &Engine) -> usize {
        let mut n = 0;
        loop {
            let batch = engine.drain_events(256);
            if batch.is_empty() {
                return n;
            }
            n += batch.len();
            for e in batch {
                self.dispatch(e);
            }
        }
    }

    /// Spawns a task that moves the engine's events to this dispatcher every `every`;
    /// it ends when the dispatcher is dropped.
    pub fn pump(&self, engine: Engine, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                Dispatcher { inner }.take_from(&engine);
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Waits until every accepted event has been routed and every notification delivered
    /// or given up (scheduled retries included), at most `timeout`; `true` when idle.
    pub async fn idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inner.pending.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Enables a channel disabled after a failure (the endpoint was fixed); `false` when
    /// no channel has that name.
    pub fn enable(&self, channel: &str) -> bool {
        match self.inner.lanes.get(channel) {
            Some(lane) => {
                lane.disabled.store(false, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// The counters, in total and per channel.
    pub fn stats(&self) -> DispatcherStats {
        let s = &self.inner.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DispatcherStats {
            received: l(&s.received),
            deduplicated: l(&s.deduplicated),
            sent: l(&s.sent),
            retried: l(&s.retried),
            failed: l(&s.failed),
            dropped: l(&s.dropped),
            channels: self
                .inner
                .lanes
                .iter()
                .map(|(name, lane)| {
                    let c = &lane.stats;
                    let stats = ChannelStats {
                        sent: l(&c.sent),
                        retried: l(&c.retried),
                        failed: l(&c.failed),
                        dropped: l(&c.dropped),
                        skipped: l(&c.skipped),
                        disabled: lane.disabled.load(Ordering::Acquire),
                    };
                    (name.clone(), stats)
                })
                .collect(),
        }
    }
}

/// One notification between attempts: the retries it has left.
struct Attempt {
    n: Notification,
    delays: Delays,
}

impl Inner {
    fn dispatch(&self, event: Event) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.intake.try_send(event) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.intake_full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "notification queue full or closed ({e}): events are dropped and counted \
                     (logged once)"
                );
            }
        }
    }

    fn fail(&self, customer: Option<crate::CustomerId>, channel: &str, route: &str, why: String) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        if let Some(lane) = self.lanes.get(channel) {
            lane.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(channel, route, "notification failed for good: {why}");
        let event = Event::new(
            customer,
            EventKind::NotificationFailed {
                channel: channel.to_owned(),
                route: route.to_owned(),
                reason: why,
            },
        );
        if let Some(hook) = &self.on_failure {
            hook(&event);
        }
        self.dispatch(event);
    }

    /// Gives a dedup claim back: the notification was not delivered, a later crossing in
    /// the same period may send it.
    async fn release(&self, key: &str) {
        if let Err(e) = self.store.unmark(key).await {
            tracing::warn!(
                "dedup mark `{key}` could not be released ({e}): the notification will not \
                 be sent again in its period"
            );
        }
    }

    async fn route(&self, event: Event) {
        let name = event.kind.name().to_owned();
        for route in self.config.routes.iter().filter(|r| r.matches(&name)) {
            // A failure of a channel is not routed back to the same channel.
            if let EventKind::NotificationFailed { channel, .. } = &event.kind
                && *channel == route.channel
            {
                continue;
            }
            if let Some(n) = self.prepare(route, &event).await {
                self.enqueue(n).await;
            }
        }
    }

    /// Dedups, addresses and renders `event` for `route`; `None` when it is not to be
    /// sent.
    async fn prepare(&self, route: &RouteConfig, event: &Event) -> Option<Notification> {
        let bounds = dedup::period(route, event.at);
        let (key, ttl) = dedup::key(route, event, bounds);
        match self.store.mark_once(&key, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(e) => {
                let why = format!("dedup mark `{key}` could not be set: {e}");
                self.fail(event.customer.clone(), &route.channel, &route.name, why);
                return None;
            }
        }
        let prepared = self.address_and_render(route, event, bounds, &key).await;
        if prepared.is_none() {
            self.release(&key).await;
        }
        prepared
    }

    async fn address_and_render(
        &self,
        route: &RouteConfig,
        event: &Event,
        bounds: (u64, u64),
        key: &str,
    ) -> Option<Notification> {
        let to = match route.to.as_deref() {
            Some(CUSTOMER) => {
                let Some(c) = event.customer.as_ref() else {
                    let why = format!("event `{}` has no customer to email", event.kind.name());
                    self.fail(None, &route.channel, &route.name, why);
                    return None;
                };
                let found = match &self.directory {
                    Some(d) => d.email(c).await,
                    None => None,
                };
                match found.or_else(|| self.config.recipients.get(c.as_str()).cloned()) {
                    Some(a) => Some(a),
                    None => {
                        let why = format!("no email address for customer `{c}`");
                        self.fail(Some(c.clone()), &route.channel, &route.name, why);
                        return None;
                    }
                }
            }
            Some(other) => Some(other.to_owned()),
            None => None,
        };
        let ctx = template::context(
            event,
            self.config.upgrade_link.as_deref(),
            &dedup::iso(bounds.1),
        );
        let rendered = match &route.template {
            Some(t) => match self.templates.render(t, &ctx) {
                Ok(r) => r,
                Err(why) => {
                    self.fail(event.customer.clone(), &route.channel, &route.name, why);
                    return None;
                }
            },
            None => template::summary(event, &ctx),
        };
        Some(Notification {
            route: route.name.clone(),
            channel: route.channel.clone(),
            dedup_key: key.to_owned(),
            event: event.clone(),
            to,
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            context: ctx,
        })
    }

    async fn enqueue(&self, n: Notification) {
        let Some(lane) = self.lanes.get(&n.channel) else {
            return;
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = lane.tx.try_send(n) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            lane.stats.dropped.fetch_add(1, Ordering::Relaxed);
            let n = match e {
                mpsc::error::TrySendError::Full(n) | mpsc::error::TrySendError::Closed(n) => n,
            };
            if !lane.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    channel = n.channel.as_str(),
                    "channel queue full: notifications are dropped and counted (logged once)"
                );
            }
            self.release(&n.dedup_key).await;
        }
    }

    /// One attempt of `a` on `channel`: delivered, retried later (a timer sends it back
    /// on `retries`), or given up.
    async fn attempt(
        &self,
        lane: &Lane,
        channel: &dyn Notifier,
        mut a: Attempt,
        retries: &mpsc::UnboundedSender<Attempt>,
    ) {
        let n = &a.n;
        if lane.disabled.load(Ordering::Acquire) {
            lane.stats.skipped.fetch_add(1, Ordering::Relaxed);
            self.release(&n.dedup_key).await;
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let error = match channel.deliver(n).await {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                lane.stats.sent.fetch_add(1, Ordering::Relaxed);
                self.pending.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            Err(e) => e,
        };
        if error.is_retryable()
            && let Some(delay) = a.delays.next()
        {
            let delay = error.retry_after().map_or(delay, |r| r.max(delay));
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            lane.stats.retried.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                channel = n.channel.as_str(),
                "notification retried in {delay:?}: {error}"
            );
            let retries = retries.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {
                        // The worker is gone only when the dispatcher is.
                        let _ = retries.send(a);
                    }
                    // The dispatcher was dropped: no timer outlives it.
                    () = retries.closed() => {}
                }
            });
            return;
        }
        self.give_up(lane, n, error).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    async fn give_up(&self, lane: &Lane, n: &Notification, error: NotifyError) {
        self.release(&n.dedup_key).await;
        let mut why = error.to_string();
        if lane.policy.disables() && !lane.disabled.swap(true, Ordering::AcqRel) {
            tracing::error!(
                channel = n.channel.as_str(),
                "channel disabled: nothing more is sent to it until it is enabled again"
            );
            why.push_str("; the channel is disabled");
        }
        self.fail(n.event.customer.clone(), &n.channel, &n.route, why);
    }
}

async fn route_events(inner: Weak<Inner>, mut rx: mpsc::Receiver<Event>) {
    while let Some(event) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        inner.route(event).await;
        inner.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A channel's worker: new notifications from its queue, retries when their timers fire.
async fn deliver(
    inner: Weak<Inner>,
    name: String,
    channel: Arc<dyn Notifier>,
    mut rx: mpsc::Receiver<Notification>,
) {
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Attempt>();
    loop {
        let a = tokio::select! {
            biased;
            Some(a) = retry_rx.recv() => a,
            n = rx.recv() => {
                let Some(n) = n else { return };
                let Some(inner) = inner.upgrade() else { return };
                let Some(lane) = inner.lanes.get(&name) else { return };
                Attempt { delays: lane.policy.delays(), n }
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        let Some(lane) = inner.lanes.get(&name) else {
            return;
        };
        inner.attempt(lane, channel.as_ref(), a, &retry_tx).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::UNIX_EPOCH;

    use async_trait::async_trait;

    use super::*;
    use crate::id::{CustomerId, MeterId};
    use crate::notify::{DedupPeriod, MemoryNotifier, NotifyError, TemplateConfig};
    use crate::store_redb::RedbStore;

    const WAIT: Duration = Duration::from_secs(10);

    fn warning(customer: &str, at: u64) -> Event {
        Event::new(
            Some(CustomerId::new(customer).unwrap()),
            EventKind::QuotaWarning {
                meter: MeterId::new("api_calls").unwrap(),
                used: 80,
                limit: 100,
            },
        )
        .at(UNIX_EPOCH + Duration::from_secs(at))
    }

    /// 2026-12-07T00:20:00Z and a month later.
    const DEC: u64 = 1_796_602_800;
    const JAN: u64 = DEC + 31 * 86_400;

    fn email_config() -> NotifyConfig {
        NotifyConfig::new()
            .route(
                RouteConfig::new("quota", ["quota_warning"], "email")
                    .template("quota")
                    .to_customer(),
            )
            .template(
                "quota",
                TemplateConfig::new(
                    "{{ percentage }} % of {{ meter }}",
                    "{{ usage }}/{{ limit }}, resets {{ period_end }}",
                ),
            )
            .recipient("acme", "ops@acme.test")
            .retries(3, 1, 5)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_identical_crossings_sends_one_and_the_next_period_sends_again() {
        let email = Arc::new(MemoryNotifier::new());
        let d = Dispatcher::builder(email_config())
            .channel("email", email.clone())
            .start()
            .unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { d.dispatch(warning("acme", DEC)) })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(d.idle(WAIT).await);
        let sent = email.notifications();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to.as_deref(), Some("ops@acme.test"));
        assert_eq!(sent[0].subject, "80 % of api_calls");
        assert_eq!(sent[0].text, "80/100, resets 2027-01-01T00:00:00Z");
        assert_eq!(d.stats().deduplicated, 99);
        d.dispatch(warning("acme", JAN));
        assert!(d.idle(WAIT).await);
        assert_eq!(email.notifications().len(), 2, "a new period sends again");
        assert_ne!(
            email.notifications()[0].dedup_key,
            email.notifications()[1].dedup_key
        );
    }

    #[tokio::test]
    async fn warnings_at_different_shares_are_different_notifications() {
        let team = Arc::new(MemoryNotifier::new());
        let config = NotifyConfig::new().route(RouteConfig::new("team", ["quota_warning"], "team"));
        let d = Dispatcher::builder(config)
            .channel("team", team.clone())
            .start()
            .unwrap();
        for used in [8, 8, 9, 9] {
            let mut e = warning("acme", DEC);
            e.kind = EventKind::QuotaWarning {
                meter: MeterId::new("api_calls").unwrap(),
                used,
                limit: 10,
            };
            d.dispatch(e);
        }
        assert!(d.idle(WAIT).await);
        assert_eq!(team.notifications().len(), 2, "80 % once, 90 % once");
    }

    #[tokio::test]
    async fn repeat_after_sends_again_after_the_interval() {
        let team = Arc::new(MemoryNotifier::new());
        let config = NotifyConfig::new()
            .route(RouteConfig::new("team", ["quota_warning"], "team").repeat_after_secs(3600));
        let d = Dispatcher::builder(config)
            .channel("team", team.clone())
            .start()
            .unwrap();
        let base = DEC - DEC % 3600;
        for at in [base, base + 1800, base + 3600, base + 3601] {
            d.dispatch(warning("acme", at));
        }
        assert!(d.idle(WAIT).await);
        assert_eq!(team.notifications().len(), 2);
    }

    #[tokio::test]
    async fn dedup_marks_on_disk_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        for expected in [1, 0] {
            let store = Arc::new(RedbStore::open(&path).unwrap());
            let email = Arc::new(MemoryNotifier::new());
            let d = Dispatcher::builder(email_config())
                .channel("email", email.clone())
                .store(store)
                .start()
                .unwrap();
            d.dispatch(warning("acme", DEC));
            assert!(d.idle(WAIT).await);
            assert_eq!(email.notifications().len(), expected);
        }
    }

    /// Fails `fails` times with `error`, then succeeds; or hangs forever.
    struct Flaky {
        calls: AtomicUsize,
        fails: usize,
        error: NotifyError,
        hang: bool,
    }

    #[async_trait]
    impl Notifier for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        async fn notify(&self, _: &Event) -> Result<(), NotifyError> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fails {
                Err(self.error.clone())
            } else {
                Ok(())
            }
        }
    }

    fn flaky(fails: usize, error: NotifyError) -> Arc<Flaky> {
        Arc::new(Flaky {
            calls: AtomicUsize::new(0),
            fails,
            error,
            hang: false,
        })
    }

    fn team_config() -> NotifyConfig {
        NotifyConfig::new()
            .route(RouteConfig::new("alerts", ["quota_warning"], "flaky"))
            .route(RouteConfig::new(
                "failures",
                ["notification_failed"],
                "team",
            ))
            .retries(3, 1, 5)
    }

    #[tokio::test]
    async fn transient_failures_are_retried() {
        let f = flaky(2, NotifyError::Retryable("503".into()));
        let team = Arc::new(MemoryNotifier::new());
        let d = Dispatcher::builder(team_config())
            .channel("flaky", f.clone())
            .channel("team", team.clone())
            .start()
            .unwrap();
        d.dispatch(warning("acme", DEC));
        assert!(d.idle(WAIT).await);
        assert_eq!(f.calls.load(Ordering::SeqCst), 3);
        assert_eq!((d.stats().sent, d.stats().failed), (1, 0));
        assert!(team.notifications().is_empty());
    }

    #[tokio::test]
    async fn a_channel_failing_for_good_is_reported_by_an_event_and_a_count() {
        for (error, calls) in [
            (NotifyError::Permanent("410 gone".into()), 1),
            (NotifyError::Retryable("503".into()), 4),
        ] {
            let f = flaky(usize::MAX, error);
            let team = Arc::new(MemoryNotifier::new());
            let hooked = Arc::new(AtomicUsize::new(0));
            let h = hooked.clone();
            let d = Dispatcher::builder(team_config())
                .channel("flaky", f.clone())
                .channel("team", team.clone())
                .on_failure(Arc::new(move |_| {
                    h.fetch_add(1, Ordering::SeqCst);
                }))
                .start()
                .unwrap();
            d.dispatch(warning("acme", DEC));
            assert!(d.idle(WAIT).await);
            assert_eq!(f.calls.load(Ordering::SeqCst), calls, "1 try + 3 retries");
            assert_eq!(d.stats().failed, 1);
            assert_eq!(hooked.load(Ordering::SeqCst), 1);
            let alerts = team.notifications();
            assert_eq!(alerts.len(), 1);
            assert!(matches!(
                &alerts[0].event.kind,
                EventKind::NotificationFailed { channel, route, .. } if channel == "flaky" && route == "alerts"
            ));
        }
    }

    #[tokio::test]
    async fn a_hung_channel_does_not_hold_up_another_and_its_full_queue_drops() {
        let hung = Arc::new(Flaky {
            calls: AtomicUsize::new(0),
            fails: 0,
            error: NotifyError::Retryable(String::new()),
            hang: true,
        });
        let team = Arc::new(MemoryNotifier::new());
        let config = NotifyConfig::new()
            .route(RouteConfig::new("stuck", ["quota_warning"], "hung"))
            .route(RouteConfig::new("team", ["quota_warning"], "team"))
            .queue_capacity(4);
        let d = Dispatcher::builder(config)
            .channel("hung", hung)
            .channel("team", team.clone())
            .start()
            .unwrap();
        for i in 0..8 {
            d.dispatch(warning(&format!("c{i}"), DEC));
            // Let the router keep up so the intake queue itself does not overflow.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while team.notifications().len() < 8 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            team.notifications().len(),
            8,
            "the team channel got every one"
        );
        // The hung worker holds one, its queue holds four, three are dropped.
        assert_eq!(d.stats().dropped, 3);
        let by_channel = d.stats().channels;
        assert_eq!(by_channel["hung"].dropped, 3);
        assert_eq!(by_channel["hung"].sent, 0);
        assert_eq!(by_channel["team"].dropped, 0);
        assert_eq!(by_channel["team"].sent, 8);
    }

    #[tokio::test]
    async fn a_full_intake_drops_and_counts_without_waiting() {
        let config = NotifyConfig::new()
            .route(RouteConfig::new("team", ["quota_warning"], "team"))
            .queue_capacity(2);
        let d = Dispatcher::builder(config)
            .channel("team", Arc::new(MemoryNotifier::new()))
            .start()
            .unwrap();
        // A current-thread runtime: the router cannot run until this test yields.
        for i in 0..5 {
            d.dispatch(warning(&format!("c{i}"), DEC));
        }
        assert_eq!(d.stats().dropped, 3);
        assert!(d.idle(WAIT).await);
        assert_eq!(d.stats().sent, 2);
    }

    #[tokio::test]
    async fn configuration_mistakes_are_refused_at_start() {
        let e = Dispatcher::builder(email_config()).start().unwrap_err();
        assert!(matches!(e, NotifyConfigError::UnknownChannel { .. }), "{e}");
        let config = NotifyConfig::new().route(RouteConfig::new("r", ["x"], "c").template("nope"));
        let e = Dispatcher::builder(config)
            .channel("c", Arc::new(MemoryNotifier::new()))
            .start()
            .unwrap_err();
        assert!(
            matches!(e, NotifyConfigError::UnknownTemplate { .. }),
            "{e}"
        );
        let config = email_config().template("quota", TemplateConfig::new("{{ x", "t"));
        let e = Dispatcher::builder(config)
            .channel("email", Arc::new(MemoryNotifier::new()))
            .start()
            .unwrap_err();
        assert!(
            matches!(
                e,
                NotifyConfigError::Template {
                    part: "subject",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn customer_addresses_come_from_the_directory_first_and_a_missing_one_fails() {
        struct Dir;
        #[async_trait]
        impl CustomerDirectory for Dir {
            async fn email(&self, c: &crate::CustomerId) -> Option<String> {
                (c.as_str() == "acme").then(|| "billing@acme.test".to_owned())
            }
        }
        let email = Arc::new(MemoryNotifier::new());
        let d = Dispatcher::builder(email_config())
            .channel("email", email.clone())
            .directory(Arc::new(Dir))
            .start()
            .unwrap();
        d.dispatch(warning("acme", DEC));
        d.dispatch(warning("globex", DEC));
        assert!(d.idle(WAIT).await);
        let sent = email.notifications();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to.as_deref(), Some("billing@acme.test"));
        assert_eq!(d.stats().failed, 1);
    }

    #[tokio::test]
    async fn custom_events_route_by_name_and_engine_events_are_taken() {
        let team = Arc::new(MemoryNotifier::new());
        let config = NotifyConfig::new()
            .route(RouteConfig::new("trial", ["trial_ending"], "team"))
            .route(RouteConfig::new("all", ["*"], "team").period(DedupPeriod::Day));
        let d = Dispatcher::builder(config)
            .channel("team", team.clone())
            .start()
            .unwrap();
        let engine = Engine::new(crate::config::Config::builder().build()).unwrap();
        engine.raise(Event::custom(
            Some(CustomerId::new("acme").unwrap()),
            "trial_ending",
            serde_json::json!({"days": 3}),
        ));
        assert_eq!(d.take_from(&engine), 1);
        assert!(d.idle(WAIT).await);
        let got = team.notifications();
        assert_eq!(got.len(), 2, "both routes");
        assert_eq!(got[0].context["data"]["days"], 3);
    }

    #[tokio::test]
    async fn a_notification_that_failed_for_good_is_sent_by_the_next_crossing_in_its_period() {
        let dir = tempfile::tempdir().unwrap();
        let stores: [Arc<dyn StateStore>; 2] = [
            Arc::new(MemoryStore::new()),
            Arc::new(RedbStore::open(dir.path().join("state.redb")).unwrap()),
        ];
        for store in stores {
            // Refused once for good, then accepted.
            let f = flaky(1, NotifyError::Permanent("400".into()));
            let d = Dispatcher::builder(team_config())
                .channel("flaky", f.clone())
                .channel("team", Arc::new(MemoryNotifier::new()))
                .store(store)
                .start()
                .unwrap();
            d.dispatch(warning("acme", DEC));
            assert!(d.idle(WAIT).await);
            let s = &d.stats().channels["flaky"];
            assert_eq!((s.sent, s.failed), (0, 1));
            d.dispatch(warning("acme", DEC + 60));
            assert!(d.idle(WAIT).await);
            assert_eq!(
                f.calls.load(Ordering::SeqCst),
                2,
                "the claim was given back"
            );
            assert_eq!(d.stats().channels["flaky"].sent, 1);
            d.dispatch(warning("acme", DEC + 120));
            assert!(d.idle(WAIT).await);
            assert_eq!(
                f.calls.load(Ordering::SeqCst),
                2,
                "delivered: marked for good"
            );
            assert_eq!(d.stats().deduplicated, 1);
        }
    }

    #[tokio::test]
    async fn a_failing_channel_moves_its_own_counters_and_not_the_others() {
        let f = flaky(usize::MAX, NotifyError::Retryable("503".into()));
        let team = Arc::new(MemoryNotifier::new());
        let config = NotifyConfig::new()
            .route(RouteConfig::new("alerts", ["quota_warning"], "flaky"))
            .route(RouteConfig::new("team", ["quota_warning"], "team"))
            .retries(2, 1, 5);
        let d = Dispatcher::builder(config)
            .channel("flaky", f.clone())
            .channel("team", team.clone())
            .start()
            .unwrap();
        d.dispatch(warning("acme", DEC));
        d.dispatch(warning("globex", DEC));
        assert!(d.idle(WAIT).await);
        let s = d.stats();
        let flaky_stats = ChannelStats {
            sent: 0,
            retried: 4,
            failed: 2,
            ..Default::default()
        };
        let team_stats = ChannelStats {
            sent: 2,
            ..Default::default()
        };
        assert_eq!(s.channels["flaky"], flaky_stats);
        assert_eq!(s.channels["team"], team_stats);
        assert_eq!((s.sent, s.retried, s.failed), (2, 4, 2));
        assert_eq!(team.notifications().len(), 2);
    }

    /// Answers from a script (then `rest`), recording the (paused) time of each call and
    /// the customer it was for.
    struct Scripted {
        script: std::sync::Mutex<std::collections::VecDeque<Result<(), NotifyError>>>,
        rest: Result<(), NotifyError>,
        calls: std::sync::Mutex<Vec<(tokio::time::Instant, String)>>,
    }

    impl Scripted {
        fn new(
            script: impl IntoIterator<Item = Result<(), NotifyError>>,
            rest: Result<(), NotifyError>,
        ) -> Arc<Self> {
            Arc::new(Self {
                script: std::sync::Mutex::new(script.into_iter().collect()),
                rest,
                calls: std::sync::Mutex::new(Vec::new()),
            })
        }

        fn calls(&self) -> Vec<(tokio::time::Instant, String)> {
            self.calls.lock().unwrap().clone()
        }

        /// The gaps between consecutive calls.
        fn gaps(&self) -> Vec<Duration> {
            self.calls()
                .windows(2)
                .map(|w| w[1].0.duration_since(w[0].0))
                .collect()
        }
    }

    #[async_trait]
    impl Notifier for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        async fn notify(&self, e: &Event) -> Result<(), NotifyError> {
            let who = e.customer.as_ref().map_or("-", |c| c.as_str()).to_owned();
            self.calls
                .lock()
                .unwrap()
                .push((tokio::time::Instant::now(), who));
            let next = self.script.lock().unwrap().pop_front();
            next.unwrap_or_else(|| self.rest.clone())
        }
    }

    const SCHEDULE: [u64; 9] = [5, 300, 1800, 7200, 18_000, 36_000, 50_400, 72_000, 86_400];

    fn within_jitter(gap: Duration, secs: u64) -> bool {
        let s = Duration::from_secs(secs);
        // 10 % jitter; tokio timers round up to the millisecond.
        gap >= s.mul_f64(0.9) && gap <= s.mul_f64(1.1) + Duration::from_millis(1)
    }

    fn hook_dispatcher(hook: Arc<Scripted>, team: Arc<MemoryNotifier>) -> Dispatcher {
        let config = NotifyConfig::new()
            .route(RouteConfig::new("hook", ["quota_warning"], "hook"))
            .route(RouteConfig::new(
                "failures",
                ["notification_failed"],
                "team",
            ));
        Dispatcher::builder(config)
            .channel("hook", hook)
            .channel("team", team)
            .retry_policy("hook", RetryPolicy::standard_webhooks())
            .start()
            .unwrap()
    }

    /// Lets paused time run, a minute at a time, until `done` (at most four days).
    async fn run_until(done: impl Fn() -> bool) {
        for _ in 0..(4 * 24 * 60) {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        panic!("not done after four days");
    }

    #[tokio::test(start_paused = true)]
    async fn a_scheduled_channel_retries_at_the_standard_webhooks_offsets_then_is_disabled() {
        let hook = Scripted::new([], Err(NotifyError::Retryable("webhook 500".into())));
        let team = Arc::new(MemoryNotifier::new());
        let d = hook_dispatcher(hook.clone(), team.clone());
        d.dispatch(warning("acme", DEC));
        run_until(|| d.stats().failed == 1).await;
        assert_eq!(hook.calls().len(), 10, "immediately, then nine retries");
        for (gap, secs) in hook.gaps().into_iter().zip(SCHEDULE) {
            assert!(within_jitter(gap, secs), "{gap:?} for {secs} s");
        }
        let s = &d.stats().channels["hook"];
        assert_eq!((s.retried, s.failed, s.sent), (9, 1, 0));
        assert!(s.disabled);
        assert!(d.idle(WAIT).await);
        let alerts = team.notifications();
        assert_eq!(alerts.len(), 1, "the failure is raised once");
        assert!(
            matches!(&alerts[0].event.kind, EventKind::NotificationFailed { reason, .. } if reason.contains("disabled")),
            "{:?}",
            alerts[0].event.kind
        );
        // Disabled: nothing more is tried, nothing more is raised.
        d.dispatch(warning("globex", DEC));
        assert!(d.idle(WAIT).await);
        assert_eq!(hook.calls().len(), 10);
        assert_eq!(d.stats().channels["hook"].skipped, 1);
        assert_eq!(d.stats().failed, 1);
        assert_eq!(team.notifications().len(), 1);
        assert!(d.enable("hook"));
        assert!(!d.stats().channels["hook"].disabled);
        assert!(!d.enable("nope"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_scheduled_channel_delivers_on_the_third_attempt() {
        let fail = || Err(NotifyError::Retryable("webhook 500".into()));
        let hook = Scripted::new([fail(), fail()], Ok(()));
        let team = Arc::new(MemoryNotifier::new());
        let d = hook_dispatcher(hook.clone(), team.clone());
        d.dispatch(warning("acme", DEC));
        run_until(|| d.stats().sent == 1).await;
        let gaps = hook.gaps();
        assert_eq!(gaps.len(), 2);
        assert!(within_jitter(gaps[0], 5), "{gaps:?}");
        assert!(within_jitter(gaps[1], 300), "{gaps:?}");
        let expected = ChannelStats {
            sent: 1,
            retried: 2,
            ..Default::default()
        };
        assert_eq!(d.stats().channels["hook"], expected);
        assert!(d.idle(WAIT).await);
        assert!(team.notifications().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_endpoint_is_disabled_at_once_and_retry_after_is_honoured() {
        let gone = Scripted::new([Err(NotifyError::Permanent("webhook 410".into()))], Ok(()));
        let d = hook_dispatcher(gone.clone(), Arc::new(MemoryNotifier::new()));
        d.dispatch(warning("acme", DEC));
        assert!(d.idle(WAIT).await);
        assert_eq!(gone.calls().len(), 1);
        let s = &d.stats().channels["hook"];
        assert_eq!((s.retried, s.failed, s.disabled), (0, 1, true));

        let throttled = Scripted::new(
            [Err(NotifyError::Throttled {
                after: Duration::from_secs(3600),
                message: "webhook 429".into(),
            })],
            Ok(()),
        );
        let d = hook_dispatcher(throttled.clone(), Arc::new(MemoryNotifier::new()));
        d.dispatch(warning("acme", DEC));
        run_until(|| d.stats().sent == 1).await;
        let gap = throttled.gaps()[0];
        assert!(
            gap >= Duration::from_secs(3600) && gap <= Duration::from_millis(3_600_001),
            "Retry-After beats the 5 s of the schedule: {gap:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_retry_does_not_hold_up_the_next_notification_on_its_channel() {
        let hook = Scripted::new([Err(NotifyError::Retryable("webhook 500".into()))], Ok(()));
        let d = hook_dispatcher(hook.clone(), Arc::new(MemoryNotifier::new()));
        d.dispatch(warning("acme", DEC));
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.dispatch(warning("globex", DEC));
        run_until(|| d.stats().sent == 2).await;
        let calls = hook.calls();
        let order: Vec<&str> = calls.iter().map(|(_, who)| who.as_str()).collect();
        assert_eq!(order, ["acme", "globex", "acme"]);
        assert!(calls[1].0.duration_since(calls[0].0) < Duration::from_secs(2));
        assert!(within_jitter(calls[2].0.duration_since(calls[0].0), 5));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_dispatcher_ends_its_tasks_and_pending_retry_timers() {
        let hook = Scripted::new([], Err(NotifyError::Retryable("webhook 500".into())));
        let d = hook_dispatcher(hook.clone(), Arc::new(MemoryNotifier::new()));
        d.dispatch(warning("acme", DEC));
        run_until(|| d.stats().retried >= 1).await;
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        // The router, two channel workers, one retry timer minutes away.
        assert_eq!(alive(), 4);
        drop(d);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(alive(), 0, "no task or timer outlives the dispatcher");
        let calls = hook.calls().len();
        tokio::time::sleep(Duration::from_secs(2 * 86_400)).await;
        assert_eq!(hook.calls().len(), calls, "no retry after the drop");
    }
}
