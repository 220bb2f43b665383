//! Cluster layer: membership, election, assignment, fencing, quorum and degraded mode.
//!
//! The modules here are pure (no I/O, no clock reads; time and etcd revisions are passed in),
//! so the rules that decide who probes what and what the cluster believes are unit-tested
//! without etcd:
//! - [`assign`]: check → replica nodes (sticky bounded-load rendezvous hashing) and per-node
//!   diffs.
//! - [`quorum`]: a check's health from its replicas' opinions.
//! - [`suspect`]: local health awareness — nodes whose opinions contradict every other replica
//!   (a checker cut off from its targets) are suspected and their opinions ignored.

pub mod assign;
pub mod etcd;
pub mod keys;
pub mod node;
pub mod quorum;
pub mod suspect;
pub mod view;
