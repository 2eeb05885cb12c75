//! Property (issue 11): for every aggregation, any interleaving of records, checkpoints,
//! flushes, report rounds, restarts (graceful or crashed) and clock steps back yields, per
//! customer, meter and report window, exactly the value that aggregation defines over the
//! samples the spool received, as the provider reads it: additive meters (`count`, `sum`)
//! by summing the window's parts, non-additive ones (`max`, `latest`, `unique_count`) by
//! keeping its last part. Every record carries its meter's aggregation.
//!
//! Samples belong to the window of the checkpoint that swapped them out of the cells; a
//! crash loses the samples recorded since the last checkpoint (the model drops them too).

use std::collections::{BTreeMap, BTreeSet};

use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, ValueConfig};
use monetize_core::meter::Aggregation;
use monetize_core::report::{
    Checkpoint, MemorySpool, ReportWindow, Spool, SpoolRoute, TakeRequest,
};
use proptest::prelude::*;

const WINDOW: u64 = 10;
const START: u64 = 1_000_000;
const METERS: [(&str, Aggregation); 5] = [
    ("calls", Aggregation::Count),
    ("tokens", Aggregation::Sum),
    ("peak", Aggregation::Max),
    ("seats", Aggregation::Latest),
    ("users", Aggregation::UniqueCount),
];

#[derive(Clone, Debug)]
enum Op {
    Record {
        customer: u8,
        meter: u8,
        value: u8,
    },
    Checkpoint,
    /// Checkpoint, then seal and send everything, open windows included (a flush).
    Flush,
    /// Checkpoint, then send the closed windows (a report round).
    Round,
    Advance(u8),
    /// The clock steps back.
    StepBack(u8),
    /// Checkpoint, then a new engine (a graceful restart).
    Restart,
    /// A new engine without a checkpoint: what was recorded since the last one is lost.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..2, 0u8..5, 1u8..=30).prop_map(|(customer, meter, value)| Op::Record { customer, meter, value }),
        3 => Just(Op::Checkpoint),
        2 => Just(Op::Flush),
        2 => Just(Op::Round),
        3 => (1u8..=25).prop_map(Op::Advance),
        1 => (1u8..=15).prop_map(Op::StepBack),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

fn engine() -> Engine {
    let mut b = Config::builder();
    for (id, agg) in METERS {
        b = b.meter(match agg {
            Aggregation::Count => MeterConfig::count(id),
            other => MeterConfig::sum(id, ValueConfig::Reported(id.into())).aggregation(other),
        });
    }
    Engine::new(b.build()).expect("valid config")
}

/// The samples of one (customer, meter, window), in the order recorded.
type Samples = BTreeMap<(String, usize, u64), Vec<u64>>;

/// What `samples` are worth under `agg`.
fn value(agg: Aggregation, samples: &[u64]) -> u64 {
    match agg {
        Aggregation::Count => samples.len() as u64,
        Aggregation::Sum => samples.iter().sum(),
        Aggregation::Max => samples.iter().copied().max().unwrap_or(0),
        Aggregation::Latest => samples.last().copied().unwrap_or(0),
        _ => samples.iter().collect::<BTreeSet<_>>().len() as u64,
    }
}

struct Run {
    engine: Engine,
    spool: MemorySpool,
    routes: Vec<SpoolRoute>,
    writer: u32,
    seq: u64,
    now: u64,
    /// The latest time the clock showed (it may have stepped back since).
    latest: u64,
    /// Recorded since the last checkpoint: (customer, meter, value).
    unswapped: Vec<(String, usize, u64)>,
    /// What the spool received, by window.
    merged: Samples,
}

impl Run {
    fn checkpoint(&mut self) {
        let deltas = self.engine.checkpoint();
        self.seq += 1;
        let cp = Checkpoint::new(format!("w{}", self.writer), self.seq, self.now, deltas);
        self.spool
            .merge_checkpoints(&self.routes, &[cp], WINDOW)
            .expect("merge");
        let window = ReportWindow::containing(self.now, WINDOW).start();
        for (c, m, v) in self.unswapped.drain(..) {
            self.merged.entry((c, m, window)).or_default().push(v);
        }
    }

    fn send(&mut self, include_open: bool) {
        let mut after = None;
        loop {
            let mut req = TakeRequest::new("p", "i", self.now, 100);
            req.include_open = include_open;
            req.after = after;
            let taken = self.spool.take(&req).expect("take");
            self.spool.ack(&taken.records, self.now).expect("ack");
            match taken.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }

    fn restart(&mut self) {
        self.engine = engine();
        self.writer += 1;
        self.seq = 0;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn each_window_bills_what_its_aggregation_defines(ops in proptest::collection::vec(op(), 1..120)) {
        let mut run = Run {
            engine: engine(),
            spool: MemorySpool::new(),
            routes: vec![SpoolRoute::all("p")],
            writer: 0,
            seq: 0,
            now: START,
            latest: START,
            unswapped: Vec::new(),
            merged: Samples::new(),
        };
        for op in ops {
            match op {
                Op::Record { customer, meter, value } => {
                    let c = format!("c{customer}");
                    let m = meter as usize;
                    // A count meter counts requests: each record is one.
                    let v = if METERS[m].1 == Aggregation::Count { 1 } else { u64::from(value) };
                    run.engine.record_by_id(&c, METERS[m].0, v).unwrap();
                    run.unswapped.push((c, m, v));
                }
                Op::Checkpoint => run.checkpoint(),
                Op::Flush => { run.checkpoint(); run.send(true); }
                Op::Round => { run.checkpoint(); run.send(false); }
                Op::Advance(s) => {
                    run.now += u64::from(s);
                    run.latest = run.latest.max(run.now);
                }
                Op::StepBack(s) => run.now -= u64::from(s),
                Op::Restart => { run.checkpoint(); run.restart(); }
                Op::Crash => { run.unswapped.clear(); run.restart(); }
            }
        }
        run.checkpoint();
        // Every window closed, whatever the clock did.
        run.now = run.latest + 2 * WINDOW;
        run.send(false);
        prop_assert_eq!(run.spool.pending(None).unwrap().len(), 0, "everything delivered");

        // The provider's reading of what it acknowledged.
        let mut parts: BTreeMap<(String, usize, u64), BTreeMap<u32, u64>> = BTreeMap::new();
        for a in run.spool.acknowledged(Some("p")).unwrap() {
            let r = a.record;
            let m = METERS.iter().position(|(id, _)| *id == r.meter.as_str()).unwrap();
            prop_assert_eq!(r.aggregation, METERS[m].1, "the record carries its aggregation");
            let prev = parts
                .entry((r.customer.to_string(), m, r.window_start))
                .or_default()
                .insert(r.part, r.quantity);
            prop_assert!(prev.is_none(), "one record per part");
        }
        let billed: BTreeMap<(String, usize, u64), u64> = parts
            .into_iter()
            .map(|(k, by_part)| {
                let v = match METERS[k.1].1 {
                    Aggregation::Count | Aggregation::Sum => by_part.values().sum(),
                    _ => by_part.values().next_back().copied().unwrap_or(0),
                };
                (k, v)
            })
            .filter(|(_, v)| *v > 0)
            .collect();
        let expected: BTreeMap<(String, usize, u64), u64> = run
            .merged
            .iter()
            .map(|(k, s)| (k.clone(), value(METERS[k.1].1, s)))
            .collect();
        prop_assert_eq!(
            billed.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "the same windows"
        );
        for (k, want) in &expected {
            let got = billed[k];
            if METERS[k.1].1 == Aggregation::UniqueCount {
                // A HyperLogLog estimate: close for small sets, never a sum of parts.
                prop_assert!(got.abs_diff(*want) <= 2, "{:?}: {} for {} distinct", k, got, want);
            } else {
                prop_assert_eq!(got, *want, "{:?}", k);
            }
        }
    }
}
