//! Property: for any interleaving of record, checkpoint, evict and state changes, the sum
//! of checkpoint deltas equals the sum recorded, and evicted customers keep their state.

use std::collections::HashMap;

use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};
use monetize_core::{Engine, StateChange};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Record { customer: u8, meter: u8, qty: u16 },
    Checkpoint,
    Evict,
    Grant { customer: u8, amount: i16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 0u8..2, 0u16..1000).prop_map(|(customer, meter, qty)| Op::Record { customer, meter, qty }),
        2 => Just(Op::Checkpoint),
        1 => Just(Op::Evict),
        1 => (0u8..6, -100i16..100).prop_map(|(customer, amount)| Op::Grant { customer, amount }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn deltas_equal_recorded(ops in proptest::collection::vec(op(), 1..200)) {
        let cfg = Config::builder()
            .meter(MeterConfig::sum("a", ValueConfig::Count))
            .meter(MeterConfig::sum("b", ValueConfig::Count))
            .plan(PlanConfig::new("p").prepaid(1_000_000).price("a", 1))
            .build();
        let engine = Engine::new(cfg).unwrap();
        let meters = ["a", "b"];
        let mut recorded: HashMap<(String, &str), u64> = HashMap::new();
        let mut seen: HashMap<(String, String), u64> = HashMap::new();
        let mut balance: HashMap<String, i64> = HashMap::new();
        let take = |engine: &Engine, seen: &mut HashMap<(String, String), u64>| {
            for d in engine.checkpoint() {
                *seen.entry((d.customer.to_string(), d.meter.to_string())).or_default() += d.measure.quantity();
            }
        };
        for op in ops {
            match op {
                Op::Record { customer, meter, qty } => {
                    let c = format!("c{customer}");
                    engine.record_by_id(&c, meters[meter as usize], qty as u64).unwrap();
                    if qty > 0 {
                        *recorded.entry((c.clone(), meters[meter as usize])).or_default() += qty as u64;
                    }
                    let b = balance.entry(c).or_insert(1_000_000);
                    if meter == 0 { *b -= qty as i64; }
                }
                Op::Checkpoint => take(&engine, &mut seen),
                Op::Evict => { engine.evict_idle(0); }
                Op::Grant { customer, amount } => {
                    let c = format!("c{customer}");
                    engine.apply(&c, StateChange::GrantCredits(amount as i64)).unwrap();
                    *balance.entry(c).or_insert(1_000_000) += amount as i64;
                }
            }
        }
        take(&engine, &mut seen);
        let recorded: HashMap<(String, String), u64> =
            recorded.into_iter().map(|((c, m), v)| ((c, m.to_string()), v)).collect();
        prop_assert_eq!(seen, recorded);
        for (c, b) in balance {
            let h = engine.resolve(&c).unwrap();
            prop_assert_eq!(h.balance(), b, "balance of {} survives eviction", c);
        }
    }
}
