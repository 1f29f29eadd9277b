//! `ld.so`'s own `mmap`/`mprotect`/`munmap` (patch/ldso.rs): `dlopen`
//! maps its segments `MAP_FIXED` over its reservation and protects RELRO,
//! `dlclose` unmaps the object — each through the hooks, synchronously,
//! although libc's functions are not involved.

mod common;

use std::ffi::CString;
use std::ops::ControlFlow;

use common::recorder;
use mmun_core::Event;
use mmun_linux::maps;

const SOURCE: &str = r#"
int loader_test_value = 7;
int *const loader_test_relro = &loader_test_value;
int loader_test_get(void) { return *loader_test_relro; }
"#;

/// The lowest start and highest end of the VMAs mapping `path`'s inode.
fn object_range(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(path).unwrap().ino();
    let (mut lo, mut hi) = (u64::MAX, 0);
    let _ = maps::for_each_vma(|v| {
        if v.inode == inode {
            lo = lo.min(v.start);
            hi = hi.max(v.end);
        }
        ControlFlow::Continue(())
    });
    assert!(lo < hi, "the object is mapped");
    (lo, hi)
}

#[test]
fn dlopen_and_dlclose_go_through_the_hooks() {
    let Some(so) = common::build_c_library("mmun_loader_test", SOURCE, &["-Wl,-z,relro,-z,now"])
    else {
        return;
    };
    let patched = mmun_linux::install().expect("libc and ld.so patched");
    assert!(patched.functions.contains(&"ld.so __munmap"), "{patched:?}");
    let rec = recorder();
    let path = CString::new(so.to_str().unwrap()).unwrap();
    rec.watch(0, u64::MAX);
    // SAFETY: loads our freshly built library.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!h.is_null(), "dlopen failed");
    let opened = rec.take();
    let (lo, hi) = object_range(&so);
    let inside = |s: &&common::Seen| s.start_phase && lo <= s.start && s.end <= hi;
    assert!(
        opened
            .iter()
            .filter(inside)
            .any(|s| s.event == Event::Unmap),
        "ld.so's mmap(MAP_FIXED) of a segment: {opened:#x?}"
    );
    assert!(
        opened
            .iter()
            .filter(inside)
            .any(|s| s.event == Event::ProtectionVma),
        "ld.so's mprotect of RELRO: {opened:#x?}"
    );
    rec.watch(lo, hi);
    // SAFETY: the handle dlopen returned; nothing of the library is in use.
    assert_eq!(unsafe { libc::dlclose(h) }, 0);
    let closed = rec.take();
    let unmaps: Vec<_> = closed
        .iter()
        .filter(|s| s.event == Event::Unmap && s.start == lo)
        .collect();
    assert_eq!(unmaps.len(), 2, "one start, one end: {closed:#x?}");
    let (start, end) = (unmaps[0], unmaps[1]);
    assert!(start.start_phase && !end.start_phase, "{closed:#x?}");
    assert!(start.end >= hi, "the whole object: {closed:#x?}");
    assert_eq!(
        &start.perms[..3],
        b"r--",
        "start before the unmap: {closed:#x?}"
    );
    assert_eq!(end.perms, *b"----", "end after the unmap: {closed:#x?}");
    let _ = std::fs::remove_dir_all(so.parent().unwrap());
}
