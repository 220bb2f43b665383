//! Fuzz target `classify`: the packet classifier shared by the XDP and TC programs.
//! The invariants are documented and checked in `fuzz/src/` (`sonde_fuzz::classify::check`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sonde_fuzz::classify::check(data));
