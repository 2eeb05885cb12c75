//! Customer state survives a restart through the redb store: balances, status, plan and
//! quota usage this period.

use std::sync::Arc;
use std::time::Duration;

use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig};
use monetize_core::{
    AccountState, CustomerId, Engine, MemoryStore, PlanId, RedbStore, StateChange, StateStore,
    StateSync,
};

fn config() -> Config {
    Config::builder()
        .meter(MeterConfig::count("calls"))
        .plan(PlanConfig::new("free").quota(QuotaConfig::new("calls", 5, Period::Month)))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(3_000)
                .price("calls", 1_000),
        )
        .default_plan("free")
        .build()
}

fn calls(engine: &Engine, customer: &str, n: u64) {
    let h = engine.resolve(customer).unwrap();
    engine.record(&h, engine.meter_index("calls").unwrap(), n);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");

    {
        let engine = Engine::new(config()).unwrap();
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let sync = StateSync::start(engine.clone(), store, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(sync.restored().restored, 0);
        engine.register("pre", "prepaid").unwrap();
        calls(&engine, "pre", 2);
        calls(&engine, "freebie", 4);
        engine.apply("late", StateChange::Delinquent(true)).unwrap();
        assert_eq!(sync.sync_now().await.unwrap(), 3);
        assert_eq!(
            sync.sync_now().await.unwrap(),
            0,
            "unchanged customers are not written again"
        );
        // Changes after the last sync are saved by shutdown.
        calls(&engine, "pre", 1);
        assert_eq!(sync.shutdown().await.unwrap(), 1);
    }

    let engine = Engine::new(config()).unwrap();
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let sync = StateSync::start(engine.clone(), store, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(sync.restored().restored, 3);
    let pre = engine.usage("pre").unwrap();
    assert_eq!(pre.balance, 0, "3 calls at 1,000 spent the 3,000 credits");
    assert_eq!(pre.plan.unwrap().as_str(), "prepaid");
    let free = engine.usage("freebie").unwrap();
    assert_eq!(free.meters[0].used, 4, "quota usage this period restored");
    assert_eq!(free.meters[0].remaining, Some(1));
    assert!(engine.resolve("late").unwrap().status().delinquent);
    sync.shutdown().await.unwrap();
}

#[tokio::test]
async fn changes_are_saved_every_interval_without_being_asked() {
    let engine = Engine::new(config()).unwrap();
    let store = Arc::new(MemoryStore::new());
    let sync = StateSync::start(engine.clone(), store.clone(), Duration::from_millis(20))
        .await
        .unwrap();
    engine.register("pre", "prepaid").unwrap();
    calls(&engine, "pre", 1);
    let id = CustomerId::new("pre").unwrap();
    // Bounded wait for the periodic save: what a kill -9 would keep.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if store.load(&id).await.unwrap().map(|s| s.balance) == Some(2_000) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "state never saved periodically"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sync.shutdown().await.unwrap();
}

#[tokio::test]
async fn stored_customers_on_unknown_plans_are_skipped_with_the_reason() {
    let store = Arc::new(MemoryStore::new());
    let mut st = AccountState::default();
    st.plan = Some(PlanId::new("gold").unwrap());
    st.balance = 9;
    store
        .save(&CustomerId::new("old").unwrap(), &st)
        .await
        .unwrap();
    store
        .save(&CustomerId::new("fine").unwrap(), &AccountState::default())
        .await
        .unwrap();
    let engine = Engine::new(config()).unwrap();
    let sync = StateSync::start(engine.clone(), store, Duration::from_secs(3600))
        .await
        .unwrap();
    let r = sync.restored();
    assert_eq!(r.restored, 1);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].0.as_str(), "old");
    assert!(
        r.skipped[0].1.contains("unknown plan `gold`"),
        "{:?}",
        r.skipped
    );
    sync.shutdown().await.unwrap();
}
