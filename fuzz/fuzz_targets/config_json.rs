//! Fuzz target `config_json`: the JSON check and defaults parser (API, etcd).
//! The invariants are documented and checked in `fuzz/src/` (`sonde_fuzz::config::check_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sonde_fuzz::config::check_json(data));
