//! The checks behind sonde's cargo-fuzz targets, one module per parser that sees bytes
//! from outside, plus the seed inputs of each target.
//!
//! Each `fuzz_targets/<name>.rs` is a one-line call into [`TARGETS`]'s `check`, so the
//! invariants live here: they build and lint with the plain toolchain, and
//! `cargo run --example gen_corpus` runs every seed through them before writing
//! `fuzz/corpus/<name>/`.
//!
//! Run them with `cargo xtask fuzz` (every target, bounded time, fails on a crash), or
//! one by hand: `cargo +nightly fuzz run classify` from the workspace root.

pub mod api;
pub mod classify;
pub mod config;
pub mod dns;
pub mod http;

use std::{cell::Cell, net::UdpSocket};

use probe_common::config::ProbeConfig;

/// One fuzz target: its name (the `[[bin]]` and corpus directory name), the check run
/// on every input, and the seeds written to `fuzz/corpus/<name>/`.
pub struct Target {
    /// Binary name and corpus directory.
    pub name: &'static str,
    /// Runs the parser on one input and panics when an invariant breaks.
    pub check: fn(&[u8]),
    /// Valid (or nearly valid) inputs to start from, as `(file name, bytes)`.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
}

/// Every target, in the order `cargo xtask fuzz` lists them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "classify",
        check: classify::check,
        seeds: classify::seeds,
    },
    Target {
        name: "http_response",
        check: http::check,
        seeds: http::seeds,
    },
    Target {
        name: "dns_response",
        check: dns::check,
        seeds: dns::seeds,
    },
    Target {
        name: "config_toml",
        check: config::check_toml,
        seeds: config::seeds_toml,
    },
    Target {
        name: "config_json",
        check: config::check_json,
        seeds: config::seeds_json,
    },
    Target {
        name: "api_request",
        check: api::check,
        seeds: api::seeds,
    },
];

/// The probe configuration the packet targets classify against: the same values as the
/// privileged tests (`tests/src/frames.rs`), so seed frames built for it carry valid
/// cookies.
#[must_use]
pub fn probe_config() -> ProbeConfig {
    ProbeConfig {
        cookie_key: [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210],
        port_lo: 61000,
        port_hi: 61999,
        icmp_id: 0x5d0e,
        enabled: 1,
        reset: 0,
        ingress: 0,
        _pad: [0; 7],
    }
}

/// Cuts `data` into pieces as successive socket reads might: one piece when `seed` is 0,
/// otherwise pieces of 1 to `seed % 64 + 1` bytes chosen by a xorshift generator seeded
/// with `seed`. Never yields an empty piece.
#[must_use]
pub fn splits(data: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 || data.is_empty() {
        return vec![data];
    }
    let max = usize::from(seed % 64) + 1;
    let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % max as u64) as usize + 1;
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

thread_local! {
    /// Whether this thread already left the host's network namespace.
    static ISOLATED: Cell<bool> = const { Cell::new(false) };
}

/// Moves the calling thread into a new, empty network namespace (no interface up, no
/// route), once per thread, and aborts if that is impossible.
///
/// Needed by every target that reaches `sonde::config`: a check's target may be a host
/// name, which the config parser resolves with the system resolver. Fuzzed inputs would
/// otherwise send DNS queries for random names to the host's nameserver; in the empty
/// namespace the resolver fails at once (network unreachable) and nothing leaves the
/// machine. Root (CI) uses a plain network namespace; others try a user namespace too.
pub fn isolate_network() {
    if ISOLATED.with(Cell::get) {
        return;
    }
    // SAFETY: unshare only changes this thread's namespaces; no memory is involved.
    let netns = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0
        // SAFETY: as above.
        || unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } == 0;
    // A UDP connect sends nothing; it only looks up a route, which must not exist.
    let routed = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:53"))
        .is_ok();
    if !netns || routed {
        eprintln!(
            "sonde-fuzz: cannot isolate the network (unshare: {}, route found: {routed}); \
             refusing to fuzz the config parser, which resolves host names: run as root \
             or allow unprivileged user namespaces",
            if netns { "ok" } else { "failed" }
        );
        std::process::abort();
    }
    ISOLATED.with(|c| c.set(true));
}

#[cfg(test)]
mod tests {
    use super::splits;

    #[test]
    fn splits_cover_the_input_in_order() {
        let data: Vec<u8> = (0..=255).collect();
        for seed in 0..=255u8 {
            let parts = splits(&data, seed);
            assert!(parts.iter().all(|p| !p.is_empty()));
            assert_eq!(parts.concat(), data, "seed {seed}");
        }
        assert_eq!(splits(&[], 7), vec![&[0u8; 0][..]]);
    }
}
