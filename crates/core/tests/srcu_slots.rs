//! The global SRCU domain's per-thread slots go back when a thread exits,
//! although the thread-local that holds them has no destructor (it must
//! not: registering one allocates, and the first read section runs on the
//! hook-safe dispatch path). Alone in its binary: it counts process-wide
//! slots.

use mmun_core::{Event, Invalidation, Mm, Notifier, NotifierOps, Range};

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn short_lived_dispatching_threads_reuse_their_slots() {
    let mm = Mm::new();
    let _n = Notifier::register(&mm, &NotifierOps::<()>::EMPTY, ()).unwrap();
    // Registration retires the old list snapshot through call_srcu; the
    // worker's grace period also tops the free slots up, and would add one
    // if it ran while a thread below holds its slot. Let it finish first.
    mmun_core::synchronize();
    let (slots_before, free_before) = mmun_core::global_srcu_slot_stats();
    assert!(
        free_before >= 8,
        "registration keeps free slots ready: {free_before}"
    );
    // Several times more threads than free slots, one after another.
    for _ in 0..4 * slots_before {
        let mm = mm.clone();
        std::thread::spawn(move || {
            let lock = mm.mmap_read();
            Invalidation::start(Range::new(&lock, Event::Clear, 0, 0x1000)).end();
        })
        .join()
        .unwrap();
    }
    let (slots_after, free_after) = mmun_core::global_srcu_slot_stats();
    assert_eq!(slots_after, slots_before, "no slot was added");
    assert_eq!(
        free_after, free_before,
        "every exited thread's slot is free again"
    );
}
