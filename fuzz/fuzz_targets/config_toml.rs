//! Fuzz target `config_toml`: the configuration file parser.
//! The invariants are documented and checked in `fuzz/src/` (`sonde_fuzz::config::check_toml`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sonde_fuzz::config::check_toml(data));
