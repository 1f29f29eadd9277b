//! Errors of the subsystem and the errno each one stands for.
//!
//! | variant | errno | raised by |
//! |---|---|---|
//! | [`Error::Overflow`] | `EOVERFLOW` | interval insert with length 0 or `start + length` past `u64::MAX`; `get` past `u32::MAX` users |
//! | [`Error::NoUsers`] | `EINVAL` | registration or insert on an address space that has exited (`mm_users == 0`) |
//! | [`Error::FallibleStartWithEnd`] | `EINVAL` | registering ops whose `invalidate_range_start` may fail and that also have `invalidate_range_end` |
//! | [`Error::NoAllocNotifier`] | `EINVAL` | `get` with ops that lack `alloc_notifier` |
//! | [`Error::Alloc`] | as given | `alloc_notifier` failed; its errno is passed through |
//! | [`Error::Disabled`] | `ENOSYS` | any registration in the `disabled` (`!CONFIG_MMU_NOTIFIER`) build |
//!
//! A non-blockable invalidation that a notifier refuses is not an error of
//! this kind but a [`WouldBlock`], the kernel's `-EAGAIN`.

/// What can go wrong when subscribing to an address space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Zero length, an interval that wraps past `u64::MAX`, or a refcount
    /// that would overflow (`EOVERFLOW`).
    #[error("interval has zero length or overflows the address space (EOVERFLOW)")]
    Overflow,
    /// The address space has no users left: it has exited (`EINVAL`).
    #[error("the address space has exited (mm_users == 0, EINVAL)")]
    NoUsers,
    /// Ops whose `invalidate_range_start` can fail must not have an
    /// `invalidate_range_end` (`EINVAL`).
    #[error(
        "a notifier whose invalidate_range_start can fail must not implement invalidate_range_end (EINVAL)"
    )]
    FallibleStartWithEnd,
    /// `get` needs `alloc_notifier` to create the shared subscription (`EINVAL`).
    #[error("mmu_notifier_get() needs ops with alloc_notifier (EINVAL)")]
    NoAllocNotifier,
    /// `alloc_notifier` failed with this errno.
    #[error("alloc_notifier failed (errno {0})")]
    Alloc(i32),
    /// Built without MMU notifiers (`ENOSYS`).
    #[error("built with the `disabled` feature: MMU notifiers are compiled out (ENOSYS)")]
    Disabled,
}

impl Error {
    /// The positive errno Linux returns for this condition.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Overflow => 75,
            Error::NoUsers | Error::FallibleStartWithEnd | Error::NoAllocNotifier => 22,
            Error::Alloc(errno) => *errno,
            Error::Disabled => 38,
        }
    }
}

/// The `Result` of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A notifier refused a non-blockable invalidation because it would have to
/// sleep: the kernel's `-EAGAIN` from `invalidate_range_start`, and `false`
/// from an interval notifier's `invalidate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, thiserror::Error)]
#[error("the notifier would have to sleep in a non-blockable range (EAGAIN)")]
pub struct WouldBlock;

impl WouldBlock {
    /// `EAGAIN`.
    pub const ERRNO: i32 = 11;
}
