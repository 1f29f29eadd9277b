//! A registrar made of two user functions, as UCX's `ucs_rcache_ops_t`
//! (`mem_reg`, `mem_dereg`) is: the C API wraps this one.

use std::fmt;
use std::marker::PhantomData;

use super::backend::{Primary, Registrar, Step};

/// A [`Registrar`] calling `mem_reg(addr, len) -> Result<H, E>` to register
/// and `mem_dereg(&H)` to release.
///
/// `mem_reg` sees the page-aligned range after the primary faulted it in;
/// it may register it with any device that pins what it is given
/// (`ibv_reg_mr`, `IORING_REGISTER_BUFFERS`, ...). `mem_dereg` is called
/// once per successful `mem_reg`, with no use in flight, and — when an
/// invalidation calls it — before the pages change, possibly from inside
/// the `free()`/`munmap()` that changes them: it must not allocate through
/// the hooked allocator, must not take a lock the thread calling `free`
/// may hold, and must not fail (see [`Registrar::deregister`]).
pub struct Callbacks<H, Reg, Dereg> {
    mem_reg: Reg,
    mem_dereg: Dereg,
    handle: PhantomData<fn() -> H>,
}

impl<H, Reg, Dereg> Callbacks<H, Reg, Dereg> {
    /// The registrar of `mem_reg` and `mem_dereg`.
    pub const fn new(mem_reg: Reg, mem_dereg: Dereg) -> Self {
        Callbacks {
            mem_reg,
            mem_dereg,
            handle: PhantomData,
        }
    }
}

impl<P, H, Reg, Dereg> Registrar<P> for Callbacks<H, Reg, Dereg>
where
    P: Primary,
    H: Send + Sync + 'static,
    Reg: Fn(u64, u64) -> Result<H, P::Error> + Send + Sync + 'static,
    Dereg: Fn(&H) + Send + Sync + 'static,
{
    type Handle = H;

    fn register(&self, _: &P, start: u64, end: u64, _: P::Pages) -> Result<H, Step<P::Error>> {
        (self.mem_reg)(start, end - start).map_err(Step::Fail)
    }

    fn deregister(&self, _: &P, handle: &H) {
        (self.mem_dereg)(handle);
    }
}

impl<H, Reg, Dereg> fmt::Debug for Callbacks<H, Reg, Dereg> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callbacks").finish_non_exhaustive()
    }
}
