//! Memory per customer and per (customer, meter) usage cell, measured two ways:
//!
//! - live heap bytes, from a counting global allocator wrapping `std::alloc::System`
//!   (what the program asked for; excludes the allocator's own headers and free space);
//! - resident set size, from `/proc/self/statm` (what the process really holds; includes
//!   allocator overhead and page granularity).
//!
//! Each configuration runs in a fresh child process (this binary re-executed), so memory
//! freed by one run cannot be reused by the next and hide its growth. A run builds an
//! engine with M `sum` meters, generates the ids, takes both measures, admits N = 200,000
//! customers and records 1 on each of their M cells, then takes both measures again.
//!
//! Run: `cargo bench -p monetize-benches --bench memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use monetize_benches::{config_with_meters, customer_ids};
use monetize_core::{Engine, MeterIndex};

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CUSTOMERS: usize = 200_000;
const CHILD_ENV: &str = "MONETIZE_MEMORY_METERS";

/// The page size, from the auxiliary vector (`AT_PAGESZ`); 4096 if it cannot be read.
fn page_size() -> usize {
    const AT_PAGESZ: u64 = 6;
    let Ok(aux) = std::fs::read("/proc/self/auxv") else {
        return 4096;
    };
    aux.chunks_exact(16)
        .map(|c| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
            (word(&c[..8]), word(&c[8..]))
        })
        .find(|(k, _)| *k == AT_PAGESZ)
        .map_or(4096, |(_, v)| v as usize)
}

/// Resident set size in bytes, from `/proc/self/statm` (second field, in pages).
fn rss_bytes(page: usize) -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * page
}

fn child(meters: usize) {
    let page = page_size();
    let engine = match Engine::new(config_with_meters(meters, CUSTOMERS + 16)) {
        Ok(e) => e,
        Err(e) => panic!("config: {e}"),
    };
    let indexes: Vec<MeterIndex> = (0..meters)
        .map(|i| engine.meter_index(&format!("m{i}")).expect("meter"))
        .collect();
    let ids = customer_ids(CUSTOMERS);
    // Warm up whatever the first admission allocates lazily (thread locals, arc-swap debt
    // slots) with a customer outside the measured set.
    drop(engine.resolve("warm-up").expect("resolve"));

    let (bytes0, allocs0, rss0) = (
        LIVE_BYTES.load(Ordering::SeqCst),
        LIVE_ALLOCS.load(Ordering::SeqCst),
        rss_bytes(page),
    );
    for id in &ids {
        let h = engine.resolve(id).expect("resolve");
        for &m in &indexes {
            engine.record(&h, m, 1);
        }
    }
    let (bytes1, allocs1, rss1) = (
        LIVE_BYTES.load(Ordering::SeqCst),
        LIVE_ALLOCS.load(Ordering::SeqCst),
        rss_bytes(page),
    );
    assert_eq!(engine.stats().customers, CUSTOMERS + 1);
    // "<meters> <heap bytes> <heap allocations> <rss bytes>" for the parent.
    println!(
        "{meters} {} {} {}",
        bytes1 - bytes0,
        allocs1 - allocs0,
        rss1.saturating_sub(rss0)
    );
    drop(engine);
}

fn main() {
    if let Ok(m) = std::env::var(CHILD_ENV) {
        child(m.parse().expect("meter count"));
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let n = CUSTOMERS as f64;
    println!("memory: N = {CUSTOMERS} customers admitted, 1 recorded on every cell");
    println!(
        "{:>6} | {:>14} {:>12} {:>12} {:>12} | {:>14} {:>12} {:>12}",
        "meters",
        "heap bytes",
        "B/customer",
        "B/cell",
        "allocs/cust",
        "rss bytes",
        "B/customer",
        "B/cell"
    );
    let mut per_customer = Vec::new();
    for meters in [2usize, 8] {
        let out = Command::new(&exe)
            .env(CHILD_ENV, meters.to_string())
            .output()
            .expect("run child");
        assert!(out.status.success(), "child failed: {out:?}");
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<f64> = line
            .split_whitespace()
            .map(|s| s.parse().expect("number"))
            .collect();
        let (heap, allocs, rss) = (f[1], f[2], f[3]);
        let cells = n * meters as f64;
        println!(
            "{meters:>6} | {heap:>14} {:>12.1} {:>12.1} {:>12.2} | {rss:>14} {:>12.1} {:>12.1}",
            heap / n,
            heap / cells,
            allocs / n,
            rss / n,
            rss / cells
        );
        per_customer.push((meters, heap / n, rss / n));
    }
    if let [(m0, h0, r0), (m1, h1, r1)] = per_customer[..] {
        let extra = (m1 - m0) as f64;
        println!(
            "marginal cost of one more meter: {:.1} B/customer heap, {:.1} B/customer rss",
            (h1 - h0) / extra,
            (r1 - r0) / extra
        );
    }
}
