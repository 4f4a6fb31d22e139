//! The header judge must not allocate for a message without scanner headers (the common case
//! for authenticated submissions): counted with a global allocator in this test binary only.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use common::messages::{fixture, headers};
use outbound_guard::config::{HeaderPattern, HeaderRule, HeaderTest, VerdictConfig};
use outbound_guard::verdict::HeaderJudge;

thread_local! {
    // Per thread: the test harness runs other tests on other threads.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn no_allocation_without_scanner_headers() {
    let judge = HeaderJudge::new(&VerdictConfig {
        headers: true,
        spamd: None,
        rspamd: None,
        timeout: Duration::from_secs(10),
        max_scan_bytes: 512 * 1024,
        rules: vec![HeaderRule {
            header: "X-Scanner-Verdict".into(),
            test: HeaderTest::Pattern(HeaderPattern::new("spam").unwrap()),
        }],
    });
    let ham = headers(&fixture("ham.eml"), true);
    let before = allocations();
    let verdict = judge.judge(ham.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    let after = allocations();
    assert_eq!(verdict, None);
    assert_eq!(after - before, 0, "allocations while judging a message without scanner headers");

    // And the counter works: a tagged message does allocate (decoding, the detail).
    let tagged = headers(&fixture("spamassassin-tagged.eml"), true);
    let before = allocations();
    assert!(judge.judge(tagged.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))).is_some());
    assert!(allocations() > before);
}
