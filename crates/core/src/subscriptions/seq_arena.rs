//! Where interval subscriptions keep their seq words: indexed by the
//! subscription's id, in chunks that never move and are freed only with
//! the address space's subscriptions.
//!
//! Because nothing moves, a running invalidation borrows the words of the
//! subscriptions it collected for as long as it holds the subscriptions,
//! without the lock and without touching a reference count (an `Arc` per
//! hit cost a cache miss on a large tree). A handle keeps a plain pointer
//! to its word next to the `Arc<Mm>` that keeps the subscriptions, and so
//! the arena, alive ([`SeqHandle`]).
//!
//! Layout: chunk `b` holds `FIRST << b` words (ids `FIRST * (2^b - 1) ..
//! FIRST * (2^(b+1) - 1)`), allocated zeroed on first use, so a lookup is
//! one load of the chunk's pointer (a line of the subscriptions that stays
//! cached) before the word itself. A small address space pays for one
//! chunk of `FIRST` words; a large one reserves at most twice what it uses,
//! and the zeroed pages it has not touched yet are not resident.

#![allow(unsafe_code)]

use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::OnceLock;

use crate::Mm;
use crate::seq_word::IntervalSub;
use crate::sync::Arc;

#[cfg(not(mmun_loom))]
const FIRST_BITS: u32 = 10;
#[cfg(mmun_loom)]
const FIRST_BITS: u32 = 2;
const FIRST: usize = 1 << FIRST_BITS;
/// Chunks: enough for every `u32` id.
const CHUNKS: usize = 33 - FIRST_BITS as usize;

/// The seq words of one address space's interval subscriptions.
pub(crate) struct SeqArena {
    chunks: [OnceLock<Box<[IntervalSub]>>; CHUNKS],
}

impl SeqArena {
    pub(crate) fn new() -> SeqArena {
        SeqArena {
            chunks: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Makes sure `id` has a word and returns it, for the new
    /// subscription's handle. Called under the subscriptions lock, so the
    /// lazy initialisations never race.
    pub(crate) fn ensure(&self, id: u32) -> &IntervalSub {
        let (chunk, offset) = locate(id);
        let words = self.chunks[chunk].get_or_init(|| zeroed_words(FIRST << chunk));
        &words[offset]
    }

    /// The word of `id`, which `ensure` has seen.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> &IntervalSub {
        let (chunk, offset) = locate(id);
        let words = self.chunks[chunk]
            .get()
            .expect("seq word ensured at insert");
        &words[offset]
    }
}

/// `n` words, all 0 (an `IntervalSub` of seq 0, as `IntervalSub::new`).
#[cfg(not(mmun_loom))]
fn zeroed_words(n: usize) -> Box<[IntervalSub]> {
    let words = Box::<[IntervalSub]>::new_zeroed_slice(n);
    // SAFETY: an `IntervalSub` is one `AtomicU64`, for which all-zero bytes
    // are the valid value 0 (`AtomicU64` has the layout of `u64`).
    unsafe { words.assume_init() }
}

/// Under loom an atomic is more than its value: build each one.
#[cfg(mmun_loom)]
fn zeroed_words(n: usize) -> Box<[IntervalSub]> {
    (0..n).map(|_| IntervalSub::new()).collect()
}

/// Chunk and offset in it of an id's word.
#[inline]
fn locate(id: u32) -> (usize, usize) {
    let index = id as usize;
    let chunk = (index / FIRST + 1).ilog2() as usize;
    (chunk, index - FIRST * ((1 << chunk) - 1))
}

/// A handle's seq word with the address space that owns it: the `Arc`
/// keeps the subscriptions, and with them the arena, alive, so the word's
/// pointer stays valid for as long as this lives.
pub(crate) struct SeqHandle {
    mm: Arc<Mm>,
    /// Into a chunk of `mm`'s arena (`SeqArena::ensure`).
    word: NonNull<IntervalSub>,
}

// SAFETY: a `SeqHandle` is an `Arc<Mm>` (`Send + Sync`) and a shared
// reference to an `IntervalSub` (`Sync`, being one atomic) in disguise.
unsafe impl Send for SeqHandle {}
// SAFETY: as above.
unsafe impl Sync for SeqHandle {}

impl SeqHandle {
    /// `word` must be the word `ensure` returned from the arena of `mm`'s
    /// subscriptions.
    pub(crate) fn new(mm: &Arc<Mm>, word: &IntervalSub) -> SeqHandle {
        debug_assert!(
            mm.subscriptions()
                .is_some_and(|s| s.seq_word_id(word).is_some())
        );
        SeqHandle {
            mm: Arc::clone(mm),
            word: NonNull::from(word),
        }
    }

    /// The address space.
    pub(crate) fn mm(&self) -> &Arc<Mm> {
        &self.mm
    }
}

impl Deref for SeqHandle {
    type Target = IntervalSub;
    #[inline]
    fn deref(&self) -> &IntervalSub {
        // SAFETY: `word` points into a chunk of the arena of `self.mm`'s
        // subscriptions (the contract of `new`). The subscriptions are set
        // once in the `Mm` and never replaced or dropped before it, and the
        // arena frees its chunks only when they drop; `self.mm` keeps the
        // `Mm` alive for as long as this borrow of `self`.
        unsafe { self.word.as_ref() }
    }
}

impl fmt::Debug for SeqHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl SeqArena {
    /// The id whose word `word` is, if it is one of this arena's words.
    pub(crate) fn id_of(&self, word: &IntervalSub) -> Option<u32> {
        let at = std::ptr::from_ref(word);
        self.chunks.iter().enumerate().find_map(|(chunk, words)| {
            let words = words.get()?;
            let offset = words.as_ptr_range().contains(&at).then(|| {
                // In bounds, so the division is exact.
                (at.addr() - words.as_ptr().addr()) / size_of::<IntervalSub>()
            })?;
            u32::try_from(FIRST * ((1 << chunk) - 1) + offset).ok()
        })
    }
}

#[cfg(all(test, not(mmun_loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_its_own_word() {
        let arena = SeqArena::new();
        let ids = [
            0,
            1,
            FIRST as u32 - 1,
            FIRST as u32,
            3 * FIRST as u32 - 1,
            3 * FIRST as u32,
            5 * FIRST as u32 + 3,
            40_000,
        ];
        for (i, &id) in ids.iter().enumerate() {
            arena.ensure(id).set_seq_locked(2 * i as u64 + 1);
        }
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(arena.get(id).load_seq(), 2 * i as u64 + 1);
            assert_eq!(arena.id_of(arena.get(id)), Some(id));
        }
        assert_eq!(arena.id_of(&IntervalSub::new()), None);
        assert_eq!(locate(FIRST as u32 - 1), (0, FIRST - 1));
        assert_eq!(locate(FIRST as u32), (1, 0));
        assert_eq!(locate(3 * FIRST as u32), (2, 0));
        assert_eq!(locate(u32::MAX).0, CHUNKS - 1);
    }
}
