//! Page-table entries: the x86-64 layout, simplified to the bits the core
//! VM looks at.

use std::fmt;

use crate::frame::Pfn;

/// One page-table entry (a PTE, or a huge PMD/PUD leaf). 0 is `none`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Pte(u64);

const PRESENT: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
const YOUNG: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const SPECIAL: u64 = 1 << 9;
const SOFT_DIRTY: u64 = 1 << 11;
const PROTNONE: u64 = 1 << 8;
/// Non-present entries with a type: bits 1..4 (`SWP_TYPE`).
const KIND_SHIFT: u32 = 1;
const KIND_MASK: u64 = 0b111 << KIND_SHIFT;
const PFN_SHIFT: u32 = 12;
const PFN_MASK: u64 = ((1 << 40) - 1) << PFN_SHIFT;

/// What a non-present, non-none entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapKind {
    /// A device-exclusive entry: a device owns the page until a CPU access.
    DeviceExclusive,
    /// A migration entry: the page is being migrated.
    Migration,
    /// A device-private entry (`SWP_DEVICE_READ`/`SWP_DEVICE_WRITE`): the
    /// page is in a device's `MEMORY_DEVICE_PRIVATE` memory, which the CPU
    /// cannot address; a CPU access migrates it back first. Unlike the
    /// other kinds it keeps the page mapped (it counts in the map count).
    DevicePrivate,
}

impl Pte {
    /// The empty entry.
    pub const NONE: Pte = Pte(0);

    /// A present entry mapping `pfn`.
    pub fn new(pfn: Pfn, write: bool) -> Pte {
        let mut bits = PRESENT | (pfn << PFN_SHIFT) & PFN_MASK;
        if write {
            bits |= WRITE | DIRTY;
        }
        Pte(bits | YOUNG)
    }

    /// The zero page, read-only and special.
    pub fn zero(pfn: Pfn) -> Pte {
        Pte(PRESENT | SPECIAL | YOUNG | (pfn << PFN_SHIFT) & PFN_MASK)
    }

    /// A non-present typed entry remembering `pfn` and writability.
    pub fn swap(kind: SwapKind, pfn: Pfn, write: bool) -> Pte {
        let code = match kind {
            SwapKind::DeviceExclusive => 1,
            SwapKind::Migration => 2,
            SwapKind::DevicePrivate => 3,
        };
        let w = if write { WRITE << 8 } else { 0 };
        Pte((code << KIND_SHIFT) | (pfn << PFN_SHIFT) & PFN_MASK | w)
    }

    /// The raw value (what `change_pte` passes on).
    pub fn raw(self) -> u64 {
        self.0
    }

    /// `pte_none`.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// `pte_present` (a PROT_NONE entry is present: the page stays mapped).
    pub fn is_present(self) -> bool {
        self.0 & PRESENT != 0
    }

    /// The kind of a non-present, non-none entry.
    pub fn swap_kind(self) -> Option<SwapKind> {
        if self.is_present() || self.is_none() {
            return None;
        }
        match (self.0 & KIND_MASK) >> KIND_SHIFT {
            1 => Some(SwapKind::DeviceExclusive),
            2 => Some(SwapKind::Migration),
            3 => Some(SwapKind::DevicePrivate),
            _ => None,
        }
    }

    /// Whether the non-present entry was writable before.
    pub fn swap_was_writable(self) -> bool {
        self.0 & (WRITE << 8) != 0
    }

    /// `is_device_private_entry`.
    pub fn is_device_private(self) -> bool {
        self.swap_kind() == Some(SwapKind::DevicePrivate)
    }

    /// Whether the entry holds a mapping of its frame in the rmap's sense
    /// (`folio_mapcount`): a present entry, or a device-private one.
    pub fn maps_frame(self) -> bool {
        self.is_present() || self.is_device_private()
    }

    /// Whether the entry lets its holder write: `pte_write` for a present
    /// entry, the write bit of a device-private one
    /// (`is_writable_device_private_entry`).
    pub fn grants_write(self) -> bool {
        self.is_write() || (self.is_device_private() && self.swap_was_writable())
    }

    /// The frame the entry maps or remembers.
    pub fn pfn(self) -> Pfn {
        (self.0 & PFN_MASK) >> PFN_SHIFT
    }

    /// `pte_write`.
    pub fn is_write(self) -> bool {
        self.is_present() && self.0 & WRITE != 0
    }

    /// `pte_young`.
    pub fn is_young(self) -> bool {
        self.0 & YOUNG != 0
    }

    /// `pte_dirty`.
    pub fn is_dirty(self) -> bool {
        self.0 & DIRTY != 0
    }

    /// `pte_special`: the zero page. Only a present entry can be special:
    /// a typed entry keeps its write bit where `SPECIAL` would be.
    pub fn is_special(self) -> bool {
        self.is_present() && self.0 & SPECIAL != 0
    }

    /// `pte_protnone`.
    pub fn is_protnone(self) -> bool {
        self.0 & PROTNONE != 0
    }

    /// `pte_soft_dirty`.
    pub fn is_soft_dirty(self) -> bool {
        self.0 & SOFT_DIRTY != 0
    }

    fn set(self, bit: u64, on: bool) -> Pte {
        if on {
            Pte(self.0 | bit)
        } else {
            Pte(self.0 & !bit)
        }
    }

    /// With the write bit set or cleared.
    pub fn with_write(self, write: bool) -> Pte {
        self.set(WRITE, write)
    }

    /// With the accessed bit set or cleared.
    pub fn with_young(self, young: bool) -> Pte {
        self.set(YOUNG, young)
    }

    /// With the dirty bit set or cleared.
    pub fn with_dirty(self, dirty: bool) -> Pte {
        self.set(DIRTY, dirty)
    }

    /// With the soft-dirty bit set or cleared.
    pub fn with_soft_dirty(self, on: bool) -> Pte {
        self.set(SOFT_DIRTY, on)
    }

    /// With PROT_NONE set or cleared (the page stays present, inaccessible).
    pub fn with_protnone(self, on: bool) -> Pte {
        self.set(PROTNONE, on)
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("none");
        }
        if let Some(kind) = self.swap_kind() {
            return write!(f, "{kind:?}(pfn {:#x})", self.pfn());
        }
        write!(
            f,
            "pfn {:#x}{}{}{}{}",
            self.pfn(),
            if self.is_write() { " w" } else { " r" },
            if self.is_young() { " young" } else { "" },
            if self.is_dirty() { " dirty" } else { "" },
            if self.is_special() { " special" } else { "" }
        )
    }
}
