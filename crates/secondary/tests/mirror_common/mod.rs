//! What the device-mirror tests share: a fixture (memory, address space,
//! oracle, mirror), a watchdog, and the multi-threaded race workload that
//! shows each injected bug is caught.

pub mod race;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use mmun_core::Owner;
use mmun_script::Prot;
use mmun_secondary::device_mirror::{DeviceMemory, DeviceMirror};
use mmun_secondary::{Bug, Coherence};
use mmun_softmmu::{AddressSpace, Config, MapRequest, Memory, ThpMode};

/// Where the tests map: 2 MiB-aligned, far from kernel-chosen addresses.
pub const B: u64 = 0x1000_0000_0000;
/// A page.
pub const P: u64 = 0x1000;
/// A PMD.
pub const M2: u64 = 0x20_0000;
/// `PROT_READ`.
pub const R: Prot = Prot {
    read: true,
    write: false,
    exec: false,
};

/// Longest a multi-threaded test may run before it counts as hung.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// One address space, the oracle, and a device mirroring it.
pub struct Fixture {
    pub memory: Arc<Memory>,
    pub space: Arc<AddressSpace>,
    pub coherence: Arc<Coherence>,
    pub mirror: Arc<DeviceMirror>,
    /// The kind of memory every device of the fixture has.
    pub variant: DeviceMemory,
}

impl Fixture {
    /// A correct mirror on a fresh address space (THP in `madvise` mode).
    pub fn new() -> Fixture {
        Fixture::with_bug(None)
    }

    /// The same with `bug` injected.
    pub fn with_bug(bug: Option<Bug>) -> Fixture {
        Fixture::build(bug, DeviceMemory::Coherent)
    }

    /// A correct mirror whose device memory is `variant` (test_hmm's
    /// `FIXTURE_VARIANT`s: `hmm_device_private`, `hmm_device_coherent`).
    pub fn in_variant(variant: DeviceMemory) -> Fixture {
        Fixture::build(None, variant)
    }

    fn build(bug: Option<Bug>, variant: DeviceMemory) -> Fixture {
        let memory = Arc::new(Memory::new());
        let config = Config {
            thp: ThpMode::Madvise,
            thp_zero_page: true,
        };
        let space = Arc::new(AddressSpace::with_config(Arc::clone(&memory), config));
        let coherence = Arc::new(Coherence::new());
        let (sp, co) = (Arc::clone(&space), Arc::clone(&coherence));
        let mirror = DeviceMirror::with_memory(sp, co, bug, Owner::unique(), variant);
        Fixture {
            memory,
            space,
            coherence,
            mirror,
            variant,
        }
    }

    /// Whether the fixture's devices have device-private memory.
    pub fn private(&self) -> bool {
        self.variant == DeviceMemory::Private
    }

    /// Another device (test_hmm's second device number) on the same
    /// address space and oracle, with memory of the same kind.
    pub fn second_mirror(&self) -> Arc<DeviceMirror> {
        let (sp, co) = (Arc::clone(&self.space), Arc::clone(&self.coherence));
        DeviceMirror::with_memory(sp, co, None, Owner::unique(), self.variant)
    }

    /// A mirror on another address space (a fork child) opened on the
    /// same device as the fixture's (same owner: `hmm_open(0)`), same
    /// oracle.
    pub fn mirror_of(&self, space: &Arc<AddressSpace>) -> Arc<DeviceMirror> {
        let (sp, co) = (Arc::clone(space), Arc::clone(&self.coherence));
        DeviceMirror::with_memory(sp, co, None, self.mirror.owner(), self.variant)
    }

    /// The frame the primary's entry at `va` names: present (huge ones
    /// followed) or device-private.
    pub fn entry_pfn(&self, va: u64) -> u64 {
        if let Some((pfn, _)) = self.space.mapped_frame(va) {
            return pfn;
        }
        let pte = self.space.pte(va);
        assert!(pte.maps_frame(), "a page is mapped at {va:#x}: {pte:?}");
        pte.pfn()
    }

    /// `mmap(addr, pages, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)`.
    pub fn map(&self, addr: u64, pages: u64, prot: Prot) {
        map_on(&self.space, addr, pages, prot, false);
    }

    /// The same with `MAP_SHARED`.
    pub fn map_shared(&self, addr: u64, pages: u64) {
        map_on(&self.space, addr, pages, Prot::RW, true);
    }

    /// CPU writes to every page of `[addr, addr + pages)`.
    pub fn cpu_write(&self, addr: u64, pages: u64) {
        for i in 0..pages {
            self.space.access(addr + i * P, true).expect("CPU write");
        }
    }

    /// The frame the CPU reaches at `va`.
    pub fn cpu_pfn(&self, va: u64) -> u64 {
        self.space.translate(va).expect("mapped for the CPU").0
    }

    /// No stale use was found; shows the first ones otherwise.
    pub fn assert_coherent(&self) {
        let found = self.coherence.violation_count();
        assert_eq!(found, 0, "violations: {:#?}", self.coherence.violations());
    }
}

/// `mmap` with `MAP_FIXED` on `space`.
pub fn map_on(space: &AddressSpace, addr: u64, pages: u64, prot: Prot, shared: bool) {
    let req = MapRequest {
        addr,
        len: pages * P,
        prot,
        shared,
        fixed: true,
        ..MapRequest::default()
    };
    assert_eq!(space.mmap(req), Ok(addr));
}

/// Runs `f` on its own thread; a run longer than [`WATCHDOG`] fails the
/// test as a hang instead of hanging it.
pub fn with_watchdog<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(value) => {
            worker.join().expect("worker finished");
            value
        }
        // The worker panicked: re-raise its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it returns"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hung for {WATCHDOG:?}"),
    }
}

pub use mmun_testkit::Rng;

/// test_hmm's `HMM_DMIRROR_READ` / `HMM_DMIRROR_WRITE` of `pages` pages
/// from `start`: fault each page (stopping at the first error, whose errno
/// the ioctl returns), then use it through the device table. Returns the
/// pages the device handled (`cpages`).
pub fn dmirror_rw(
    mirror: &DeviceMirror,
    start: u64,
    pages: u64,
    write: bool,
) -> Result<u64, mmun_secondary::FaultError> {
    use mmun_secondary::Access;
    for i in 0..pages {
        let va = start + i * P;
        mirror.fault(va, write)?;
        assert_eq!(
            mirror.access(va, write),
            Access::Hit,
            "page {i} just faulted"
        );
    }
    Ok(pages)
}

/// A shmem object holding `data` (whole pages), every page in its page
/// cache: the tmpfs file `hmm_create_file` makes and `pwrite` fills.
pub fn filled_object(memory: &Arc<Memory>, data: &[u8]) -> Arc<mmun_softmmu::shmem::ShmemObject> {
    let pages = data.len() as u64 / P;
    let object = Arc::new(mmun_softmmu::shmem::ShmemObject::new(
        Arc::clone(memory),
        pages * P,
    ));
    for index in 0..pages {
        let pfn = object
            .get_page(memory, index)
            .expect("the test machine has free pages");
        let page = &data[(index * P) as usize..((index + 1) * P) as usize];
        assert!(memory.write(pfn, 0, page), "a cache page takes writes");
        // `get_page` took a reference for a mapping; `pwrite` maps nothing.
        memory.put(pfn);
    }
    object
}

/// `pread` of the whole object: its page cache, zeros where a page is
/// not cached.
pub fn pread(object: &mmun_softmmu::shmem::ShmemObject) -> Vec<u8> {
    let pages = object.size() / P;
    let mut buf = vec![0; (pages * P) as usize];
    for index in 0..pages {
        if let Some(pfn) = object.find_page(index) {
            let page = &mut buf[(index * P) as usize..((index + 1) * P) as usize];
            object.memory().read(pfn, 0, page);
        }
    }
    buf
}

/// `mmap(addr, pages, prot, MAP_SHARED | MAP_FIXED, fd)` of `object`.
pub fn map_object(
    space: &AddressSpace,
    addr: u64,
    pages: u64,
    prot: Prot,
    object: &Arc<mmun_softmmu::shmem::ShmemObject>,
) {
    let req = MapRequest {
        addr,
        len: pages * P,
        prot,
        shared: true,
        object: Some(Arc::clone(object)),
        fixed: true,
        ..MapRequest::default()
    };
    assert_eq!(space.mmap(req), Ok(addr));
}

/// The C tests' buffer contents: `pages` pages whose `i`-th `int` is
/// `value(i)` (`ptr[i] = i`, `-i`, `i + c`, ...), as bytes.
pub fn pattern(pages: u64, value: impl Fn(i64) -> i32) -> Vec<u8> {
    let words = (pages * P / 4) as i64;
    (0..words).flat_map(|i| value(i).to_le_bytes()).collect()
}

/// `len` zero bytes (a buffer of untouched memory).
pub fn zeros(len: u64) -> Vec<u8> {
    vec![0; len as usize]
}

/// Compares two buffers, naming the first `int` that differs (the C
/// tests' `ASSERT_EQ(ptr[i], ...)` loop) instead of printing them whole.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(g, w)| g != w) {
        let word = |b: &[u8]| {
            let i = at / 4 * 4;
            i32::from_le_bytes(b[i..i + 4].try_into().unwrap())
        };
        panic!(
            "{what}: int {} is {}, expected {}",
            at / 4,
            word(got),
            word(want)
        );
    }
}

impl Fixture {
    /// CPU stores of `data` from `start`.
    pub fn cpu_fill(&self, start: u64, data: &[u8]) {
        self.space.write_bytes(start, data).expect("CPU store");
    }

    /// CPU loads of `len` bytes from `start`.
    pub fn cpu_read(&self, start: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        self.space.read_bytes(start, &mut buf).expect("CPU load");
        buf
    }
}

/// test_hmm's `HMM_DMIRROR_READ` with its data: [`dmirror_rw`], then the
/// device reads every page through its own table (`buffer->mirror`).
pub fn dmirror_read(
    mirror: &DeviceMirror,
    start: u64,
    pages: u64,
) -> Result<Vec<u8>, mmun_secondary::FaultError> {
    use mmun_secondary::Access;
    let mut buf = vec![0; (pages * P) as usize];
    for i in 0..pages {
        let va = start + i * P;
        mirror.fault(va, false)?;
        let piece = &mut buf[(i * P) as usize..((i + 1) * P) as usize];
        assert_eq!(mirror.read_bytes(va, piece), Access::Hit, "page {i}");
    }
    Ok(buf)
}

/// test_hmm's `HMM_DMIRROR_WRITE` of `data` from `start`: each page is
/// faulted for writing, then written through the device table.
pub fn dmirror_write(
    mirror: &DeviceMirror,
    start: u64,
    data: &[u8],
) -> Result<u64, mmun_secondary::FaultError> {
    use mmun_secondary::Access;
    let pages = data.len() as u64 / P;
    for i in 0..pages {
        let va = start + i * P;
        mirror.fault(va, true)?;
        let piece = &data[(i * P) as usize..((i + 1) * P) as usize];
        assert_eq!(mirror.write_bytes(va, piece), Access::Hit, "page {i}");
    }
    Ok(pages)
}
