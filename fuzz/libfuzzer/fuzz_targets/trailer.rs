//! libFuzzer entry of the `trailer` target (its body: `kmm_fuzz::trailer`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmm_fuzz::trailer(data));
