//! Any bytes: the parser returns steps or an error naming a line, never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(err) = mmun_script::parse_script(text) {
            assert!(err.line >= 1);
        }
    }
});
