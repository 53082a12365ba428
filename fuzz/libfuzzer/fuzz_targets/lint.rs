//! libFuzzer entry of the `lint` target (its body: `kmm_fuzz::lint`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmm_fuzz::lint(data));
