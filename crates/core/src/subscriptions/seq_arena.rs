//! Where interval subscriptions keep their seq words: indexed by the
//! subscription's id, allocated in chunks that never move or go away while the
//! address space's subscriptions live.
//!
//! Because nothing moves, a running invalidation borrows the words of the
//! subscriptions it collected for as long as it holds the subscriptions,
//! without the lock and without touching a reference count (an `Arc` per
//! hit cost a cache miss on a large tree). Each handle keeps its own chunk
//! alive with an `Arc`, taken once at insert.
//!
//! Layout: chunks of 1024 words, found through a directory whose buckets
//! double in size (bucket `b` holds chunks `2^b - 1 .. 2^(b+1) - 1`), each
//! allocated on first use. A small address space pays for one chunk; the
//! directory overshoots by at most one pointer per chunk.

use std::sync::OnceLock;

use crate::interval_notifier::IntervalSub;
use crate::sync::Arc;

#[cfg(not(mmun_loom))]
const CHUNK_BITS: u32 = 10;
#[cfg(mmun_loom)]
const CHUNK_BITS: u32 = 2;
const CHUNK: usize = 1 << CHUNK_BITS;
/// Buckets of the directory: enough for every `u32` node index.
const BUCKETS: usize = 33 - CHUNK_BITS as usize;

/// One chunk of seq words, shared with the handles that live in it.
pub(crate) type SeqChunk = Arc<[IntervalSub]>;

type Bucket = Box<[OnceLock<SeqChunk>]>;

/// The seq words of one address space's interval subscriptions.
pub(crate) struct SeqArena {
    buckets: [OnceLock<Bucket>; BUCKETS],
}

impl SeqArena {
    pub(crate) fn new() -> SeqArena {
        SeqArena {
            buckets: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Makes sure `id` has a word and returns its chunk and offset, for
    /// the new subscription's handle. Called under the subscriptions lock,
    /// so the lazy initialisations never race.
    pub(crate) fn ensure(&self, id: u32) -> (SeqChunk, usize) {
        let (bucket, slot, offset) = locate(id);
        let bucket = self.buckets[bucket]
            .get_or_init(|| (0..1usize << bucket).map(|_| OnceLock::new()).collect());
        let chunk = bucket[slot].get_or_init(|| (0..CHUNK).map(|_| IntervalSub::new()).collect());
        (Arc::clone(chunk), offset)
    }

    /// The word of `id`, which `ensure` has seen.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> &IntervalSub {
        let (bucket, slot, offset) = locate(id);
        let chunk = self.buckets[bucket]
            .get()
            .and_then(|bucket| bucket[slot].get())
            .expect("seq word ensured at insert");
        &chunk[offset]
    }
}

/// Directory bucket, slot in it, and offset in the chunk of an id's word.
#[inline]
fn locate(id: u32) -> (usize, usize, usize) {
    let index = id as usize;
    let chunk = (index >> CHUNK_BITS) + 1;
    let bucket = chunk.ilog2() as usize;
    (bucket, chunk - (1 << bucket), index & (CHUNK - 1))
}

#[cfg(all(test, not(mmun_loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_node_has_its_own_word() {
        let arena = SeqArena::new();
        let nodes = [
            0,
            1,
            CHUNK as u32 - 1,
            CHUNK as u32,
            5 * CHUNK as u32 + 3,
            40_000,
        ];
        for (i, &n) in nodes.iter().enumerate() {
            let (chunk, offset) = arena.ensure(n);
            chunk[offset].set_seq_locked(2 * i as u64 + 1);
        }
        for (i, &n) in nodes.iter().enumerate() {
            assert_eq!(arena.get(n).load_seq(), 2 * i as u64 + 1);
        }
        assert_eq!(locate(u32::MAX).0, BUCKETS - 1);
    }
}
