//! libFuzzer entry of the `mapping` target (its body: `kmm_fuzz::mapping`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmm_fuzz::mapping(data));
