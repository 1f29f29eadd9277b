//! A software MMU: address spaces with VMAs, 4-level page tables and page
//! frames, whose operations call the MMU notifiers of `mmun-core` where
//! Linux calls them, with the same event, range and flags.
//!
//! The fidelity target is Linux 6.18 (the kernel the recorded traces come
//! from) driving the v6.5 notifier API. [`AddressSpace`] is the entry
//! point: system calls (`mmap`, `munmap`, `mprotect`, `madvise`, `mremap`,
//! `mlock`, `fork`, …), faults, and the kernel-internal operations
//! (migration, KSM, reclaim, device-exclusive, OOM reaping, exit).
//! `mmun-replay` runs an address-space script on it and reports the
//! notifier ranges exactly as the kernel oracle prints them.

#![forbid(unsafe_code)]

mod address_space;
mod bytes;
pub mod device_private;
pub mod error;
mod exclusive;
mod fault;
mod folio_split;
mod fork;
pub mod frame;
mod huge_memory;
mod i_mmap;
mod khugepaged;
mod ksm;
pub mod layout;
mod madvise;
mod migrate_device;
mod mmap;
mod mprotect;
pub mod mremap;
pub mod oom_kill;
pub mod page_table;
mod page_table_lock;
mod pageout;
mod pte_fault;
mod rmap;
pub mod shmem;
mod split;
mod task_mmu;
mod uapi;
pub mod vma;
mod vma_lock;
mod zap;

pub use address_space::{
    AddressSpace, Config, DEFAULT_MAX_MAP_COUNT, DeviceView, MapRequest, PageTableBusy, ThpMode,
    Translation,
};
pub use device_private::DevicePagemap;
pub use error::{Errno, SysResult};
pub use frame::{DEFAULT_MEMORY_BYTES, Memory, Pfn};
pub use mremap::MremapFlags;
pub use uapi::{Advice, Prot};
pub use vma::{VmFlags, Vma};
