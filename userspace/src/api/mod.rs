//! The local API: what a running sonde answers on its unix socket and loopback HTTP
//! address. [`control`] is the boundary to the daemon.

pub mod control;

pub use control::{CheckHistory, Control, ControlError, DaemonInfo, Event, ReloadReport};
