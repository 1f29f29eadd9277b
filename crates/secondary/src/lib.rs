//! Reference secondary MMUs built on `mmun-core`, mirroring address spaces
//! of `mmun-softmmu`, and the coherence oracle that checks every use they
//! make of a translation.
//!
//! | secondary | kernel counterpart | subscription |
//! |---|---|---|
//! | [`device_mirror::DeviceMirror`] | `lib/test_hmm.c` (HMM's test driver) | one interval notifier per mirrored range |
//! | [`shadow_mmu::ShadowMmu`] | KVM's MMU (`virt/kvm/kvm_main.c`) | one list notifier |
//! | [`rcache::RegistrationCache`] | UCX `ucs_rcache`, libfabric's MR cache | one interval notifier per registration |
//!
//! Each can be built with an injected [`Bug`] to show that the
//! [`Coherence`] oracle catches it.

// `unsafe` is denied everywhere but `rcache/in_use.rs` (a use's counted
// raw pointer to its registration; see that file).
#![deny(unsafe_code)]

pub mod bug;
pub mod coherence;
pub mod device_mirror;
pub mod rcache;
pub mod secondary;
pub mod shadow_mmu;

pub use bug::Bug;
pub use coherence::{Coherence, Violation, ViolationKind};
pub use secondary::{Access, Counters, FaultError, Secondary};
