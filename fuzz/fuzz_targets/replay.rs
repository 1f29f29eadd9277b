//! Any script that parses: the software MMU runs it without panicking.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(steps) = mmun_script::parse_script(text) else { return };
    if steps.len() <= 64 {
        let _ = mmun_softmmu::replay::replay_report(&steps).map_err(|e| e.to_string());
    }
});
