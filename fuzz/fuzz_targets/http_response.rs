//! Fuzz target `http_response`: the HTTP/1.x response parser of HTTP(S) checks.
//! The invariants are documented and checked in `fuzz/src/` (`sonde_fuzz::http::check`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sonde_fuzz::http::check(data));
