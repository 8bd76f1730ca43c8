//! Histogram samples are drained into their buckets even when nobody scrapes `/metrics` (before,
//! they waited in the recorder for a scrape: the 30-minute soak grew from 268 MB to 1.58 GB). Its
//! own test binary, so no other test's allocations are in the process.

mod common;

/// A million samples: 8 MB of values, more with the recorder's bookkeeping.
fn record_a_million() {
    for i in 0..1_000_000u32 {
        metrics::histogram!("moe_test_upkeep_seconds").record(f64::from(i) * 1e-6);
    }
}

#[test]
fn histogram_samples_do_not_pile_up_without_a_scrape() {
    let _handle = moe_server::http::prometheus::recorder();
    let pause = moe_server::http::prometheus::UPKEEP * 2;
    record_a_million();
    std::thread::sleep(pause);
    let base = common::rss_mb();
    for _ in 0..8 {
        record_a_million();
        std::thread::sleep(pause);
    }
    let grown = common::rss_mb() - base;
    // Kept for a scrape, 8 million more samples would hold at least 64 MB.
    assert!(grown < 32.0, "resident memory grew {grown:.1} MB over 8 million unscraped samples");
    // And nothing is lost: a scrape still counts every sample.
    let text = moe_server::http::prometheus::recorder().render();
    let count = text.lines().find(|l| l.starts_with("moe_test_upkeep_seconds_count")).unwrap_or_default().to_string();
    assert!(count.ends_with(" 9000000"), "{count}");
}
