//! Fuzz target `dns_response`: the DNS answer parser of DNS checks.
//! The invariants are documented and checked in `fuzz/src/` (`sonde_fuzz::dns::check`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sonde_fuzz::dns::check(data));
