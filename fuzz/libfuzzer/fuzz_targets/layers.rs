//! libFuzzer entry of the `layers` target (its body: `kmm_fuzz::layers`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmm_fuzz::layers(data));
