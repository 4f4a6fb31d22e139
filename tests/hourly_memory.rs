//! What the per-hour series (`policy::hourly`) costs in memory: the heap bytes its table holds
//! per sampled account, counted with a global allocator in this test binary only, at its cap.
//! The README's "HTTP API and web page" quotes the figure this prints.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use compact_str::CompactString;
use outbound_guard::policy::clock::Timestamp;
use outbound_guard::policy::hourly::{HourlyTable, MAX_SAMPLED_ACCOUNTS};

/// Heap bytes in use by the whole process (one test in this binary, so nothing else allocates
/// while it measures).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Filled to its cap (names of up to 24 bytes, kept inline), the table holds under 320 bytes
/// per account; past the cap it takes no more, and once 24 hours of zeros have passed it
/// gives the memory back.
#[test]
fn the_per_hour_table_costs_a_few_hundred_bytes_per_sampled_account_and_no_more_past_its_cap() {
    let hour = 3_600_000_000_000u64;
    let t0 = 498_850 * hour + 60_000_000_000;
    let names: Vec<CompactString> =
        (0..MAX_SAMPLED_ACCOUNTS + 50_000).map(|i| format!("u{i:07}@example.com").into()).collect();
    let table = HourlyTable::default();
    let before = LIVE.load(Ordering::Relaxed);
    let pass = table.record(Timestamp::from_nanos(t0), names.iter().map(|n| (n.clone(), [3, 1])));
    let held = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!((pass.sampled, pass.left_out), (MAX_SAMPLED_ACCOUNTS, 50_000));
    let per_account = held as usize / MAX_SAMPLED_ACCOUNTS;
    eprintln!("per-hour table: {held} bytes for {MAX_SAMPLED_ACCOUNTS} accounts, {per_account} bytes each");
    assert!((200..320).contains(&per_account), "{per_account} bytes per sampled account");
    // A day later with nothing in use, the accounts and (most of) their memory are gone.
    let pass = table.record(Timestamp::from_nanos(t0 + 25 * hour), std::iter::empty());
    assert_eq!((pass.dropped, pass.held), (MAX_SAMPLED_ACCOUNTS, 0));
    let left = LIVE.load(Ordering::Relaxed) - before;
    assert!(left < 64 * 1024, "{left} bytes left after every account was dropped");
}
