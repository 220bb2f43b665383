//! Fuzz target `api_request`: the local API's request decoding.
//! The invariants are documented and checked in `fuzz/src/` (`sonde_fuzz::api::check`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sonde_fuzz::api::check(data));
