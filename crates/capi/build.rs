//! Gives `libmmun.so` its soname. The major number is the ABI version of
//! `include/mmun.h` (`MMUN_ABI_VERSION`): it changes only when a symbol is
//! removed or a signature or struct layout changes.

fn main() {
    let header = std::fs::read_to_string("include/mmun.h").expect("include/mmun.h");
    let abi = header
        .lines()
        .find_map(|l| l.strip_prefix("#define MMUN_ABI_VERSION "))
        .map(str::trim)
        .expect("include/mmun.h defines MMUN_ABI_VERSION");
    println!("cargo:rerun-if-changed=include/mmun.h");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmmun.so.{abi}");
    println!("cargo:rustc-env=MMUN_ABI_VERSION={abi}");
}
