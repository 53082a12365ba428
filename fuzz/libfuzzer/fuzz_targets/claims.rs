//! libFuzzer entry of the `claims` target (its body: `kmm_fuzz::claims`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmm_fuzz::claims(data));
