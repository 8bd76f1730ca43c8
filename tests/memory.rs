//! Memory stays bounded under many swaps (measured: 52.6 MB after 20 swaps, 54.4 MB after 200, with
//! the fixture bundles): after 200 swaps the executors alive are the ones the
//! active set uses, and resident memory stays near its level after the first swaps (its own test
//! binary, so no other test's allocations are in the process).

mod common;

use moe_core::config::Limits;
use moe_server::control::swap::{Swap, swap};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_swaps_release_their_sessions_and_memory() {
    let root = common::copy_root(&common::fixture_models(), "memory");
    let core = common::loaded_core(&root, Limits { history_per_class: 10, ..Limits::default() }).await;
    let live = core.pool.live_executors();
    let bundles = ["travel--tokenbag-b", "travel--tokenbag"];
    let mut swaps = 0;
    let mut swap_n = |n: usize| {
        let core = core.clone();
        let start = swaps;
        swaps += n;
        async move {
            for i in start..start + n {
                let req = Swap { bundle: bundles[i % 2].into(), ..Default::default() };
                swap(&core, "Travel", req).await.unwrap();
            }
        }
    };
    swap_n(20).await;
    let warm = common::rss_mb();
    swap_n(180).await;
    let after = common::rss_mb();
    eprintln!("RSS after 20 swaps {warm:.1} MB, after 200 swaps {after:.1} MB");
    assert_eq!(core.pool.live_executors(), live, "executors of swapped-out experts are released");
    assert!(after - warm < 16.0, "resident memory grew {:.1} MB over 180 swaps", after - warm);
    std::fs::remove_dir_all(root).unwrap();
}
