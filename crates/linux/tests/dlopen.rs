//! A C library loaded with `dlopen` after installation calls munmap and
//! madvise: its calls go through the patched libc, synchronously.

mod common;

use common::{PAGE, anon, one_pair, recorder};
use mmun_core::Event;

const SOURCE: &str = r#"
#include <stddef.h>
#include <sys/mman.h>
int lib_unmap(void *p, size_t len) { return munmap(p, len); }
int lib_dontneed(void *p, size_t len) { return madvise(p, len, MADV_DONTNEED); }
"#;

#[test]
fn a_dlopened_library_is_hooked() {
    let Some(so) = common::build_c_library("mmun_dlopen_test", SOURCE, &[]) else {
        return;
    };
    mmun_linux::install().expect("libc patched");
    let rec = recorder();
    let path = std::ffi::CString::new(so.to_str().unwrap()).unwrap();
    // SAFETY: loads our freshly built library and looks up its functions,
    // whose signatures are the ones declared in SOURCE.
    let (unmap, dontneed) = unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
        assert!(!h.is_null(), "dlopen failed");
        let unmap = libc::dlsym(h, c"lib_unmap".as_ptr());
        let dontneed = libc::dlsym(h, c"lib_dontneed".as_ptr());
        assert!(!unmap.is_null() && !dontneed.is_null());
        (
            std::mem::transmute::<*mut libc::c_void, extern "C" fn(*mut libc::c_void, usize) -> i32>(
                unmap,
            ),
            std::mem::transmute::<*mut libc::c_void, extern "C" fn(*mut libc::c_void, usize) -> i32>(
                dontneed,
            ),
        )
    };
    let p = anon(8, 0x33) as u64;
    rec.watch(p, p + 8 * PAGE as u64);
    assert_eq!(dontneed(p as *mut _, 8 * PAGE), 0);
    let (start, end) = one_pair(&rec.take());
    assert_eq!(
        (start.event, start.start, start.end, start.byte),
        (Event::Clear, p, p + 8 * PAGE as u64, Some(0x33))
    );
    assert_eq!(end.byte, None);
    rec.watch(p, p + 8 * PAGE as u64);
    assert_eq!(unmap(p as *mut _, 8 * PAGE), 0);
    let (start, end) = one_pair(&rec.take());
    assert_eq!(
        (start.event, start.perms, end.perms),
        (Event::Unmap, *b"rw-p", *b"----")
    );
    let _ = std::fs::remove_dir_all(so.parent().unwrap());
}
