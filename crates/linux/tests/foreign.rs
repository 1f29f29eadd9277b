//! Refusal when a prologue is not the expected one: another interposer's
//! patch (here, a `jmp rel32` written over `shmat` the way UCX's libucm
//! does when libucs loads — `shmat`, because nothing in this process calls
//! it while the fake patch is there) must stop installation with an error
//! naming the function and its bytes, leaving every function untouched.

use mmun_linux::InstallError;

#[test]
fn a_foreign_patch_is_refused_and_left_alone() {
    // SAFETY: looks up libc's shmat, which nothing here calls.
    let shmat = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"shmat".as_ptr()) } as u64;
    assert_ne!(shmat, 0);
    let page = shmat & !4095;
    // SAFETY: makes libc's page writable, then restores it below.
    let original = unsafe {
        assert_eq!(
            libc::syscall(
                libc::SYS_mprotect,
                page,
                8192,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC
            ),
            0
        );
        let original = std::ptr::read(shmat as *const [u8; 5]);
        std::ptr::write_volatile(shmat as *mut [u8; 5], [0xe9, 0x00, 0x00, 0x00, 0x00]);
        original
    };
    let result = mmun_linux::install().map(|_| ()).map_err(Clone::clone);
    // SAFETY: puts the original bytes back and the page's protection.
    let after = unsafe {
        let after = std::ptr::read(shmat as *const [u8; 5]);
        std::ptr::write_volatile(shmat as *mut [u8; 5], original);
        libc::syscall(
            libc::SYS_mprotect,
            page,
            8192,
            libc::PROT_READ | libc::PROT_EXEC,
        );
        after
    };
    assert_eq!(
        after,
        [0xe9, 0, 0, 0, 0],
        "the foreign patch was left alone"
    );
    match result {
        Err(InstallError::Foreign {
            function,
            bytes,
            verdict,
            owner,
        }) => {
            assert_eq!(function, "shmat");
            assert!(bytes.starts_with("e9 00 00 00 00 0f 05"), "{bytes}");
            assert!(verdict.contains("another interposer"), "{verdict}");
            let message = InstallError::Foreign {
                function,
                bytes,
                verdict,
                owner,
            }
            .to_string();
            assert!(message.contains("refusing to patch `shmat`"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing was patched (all or none): munmap, checked before shmat and
    // fine, still starts with its own `mov eax, 11`.
    // SAFETY: reads libc's munmap entry.
    let munmap = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"munmap".as_ptr()) } as *const [u8; 5];
    // SAFETY: libc text is readable.
    let entry = unsafe { *munmap };
    assert_eq!(entry, [0xb8, 0x0b, 0, 0, 0], "munmap untouched");
}

#[test]
fn verdicts_name_the_usual_patchers() {
    let ucm = InstallError::foreign("munmap", &[0xe9, 1, 2, 3, 4, 0x0f, 0x05]);
    assert!(ucm.to_string().contains("UCX libucm"), "{ucm}");
    let memhooks = InstallError::foreign("brk", &[0x49, 0xbb, 0, 0]);
    assert!(memhooks.to_string().contains("libfabric"), "{memhooks}");
    let unknown = InstallError::foreign("madvise", &[0xf3, 0x0f, 0x1e, 0xfa]);
    assert!(
        unknown.to_string().contains("unknown glibc build"),
        "{unknown}"
    );
    assert!(unknown.to_string().contains("f3 0f 1e fa"), "{unknown}");
}
