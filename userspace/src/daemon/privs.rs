//! Least privilege: once the kernel programs are loaded and attached, the probe ports
//! reserved and the journal opened, the daemon gives up every capability it no longer
//! needs, and with `--user` becomes an unprivileged user.
//!
//! What is kept: `CAP_NET_RAW` when stateless probing is set up (the raw sockets of
//! `tcp_syn`/`icmp` and the `AF_PACKET` fallback are opened by the engine threads,
//! which start after this point), nothing otherwise. The kernel programs stay attached
//! through the file descriptors of their links (XDP and TCX links), which need no
//! capability to keep or to close: SIGTERM still detaches them.
//!
//! Order matters, and this runs before the daemon starts any thread: capabilities
//! (capset, the bounding set, ambient capabilities) are per thread in Linux, and a
//! thread started before the drop would keep the old set.
//!
//! Steps: drop every other capability from the bounding set (needs `CAP_SETPCAP`; under
//! systemd the unit's `CapabilityBoundingSet=` has done it already, and what is absent
//! from the bounding set is skipped), clear the ambient set, switch uid/gid with
//! `PR_SET_KEEPCAPS` (groups cleared to the user's primary group), set the permitted
//! and effective sets to what is kept and the inheritable set to nothing, lock
//! `SECBIT_NOROOT` while still uid 0 (an exec would not regain root's capabilities),
//! and set `PR_SET_NO_NEW_PRIVS`. The result is read back and checked.

use std::{ffi::CString, io, path::Path};

use tracing::{info, warn};

/// `CAP_CHOWN`.
pub const CAP_CHOWN: u32 = 0;
/// `CAP_SETGID`.
pub const CAP_SETGID: u32 = 6;
/// `CAP_SETUID`.
pub const CAP_SETUID: u32 = 7;
/// `CAP_SETPCAP`.
pub const CAP_SETPCAP: u32 = 8;
/// `CAP_NET_ADMIN`.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`.
pub const CAP_NET_RAW: u32 = 13;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON`.
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`.
pub const CAP_BPF: u32 = 39;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;

/// The name of capability `cap` (for logs and errors).
#[must_use]
pub fn cap_name(cap: u32) -> String {
    match cap {
        CAP_CHOWN => "CAP_CHOWN".into(),
        CAP_SETGID => "CAP_SETGID".into(),
        CAP_SETUID => "CAP_SETUID".into(),
        CAP_SETPCAP => "CAP_SETPCAP".into(),
        CAP_NET_ADMIN => "CAP_NET_ADMIN".into(),
        CAP_NET_RAW => "CAP_NET_RAW".into(),
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN".into(),
        CAP_PERFMON => "CAP_PERFMON".into(),
        CAP_BPF => "CAP_BPF".into(),
        other => format!("capability {other}"),
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A thread's capability sets as 64-bit masks (bit n = capability n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The calling thread's capability sets.
///
/// # Errors
/// capget(2) fails.
pub fn current() -> io::Result<CapSets> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: header and a two-element data array as capget(2) wants for version 3.
    let r = unsafe { libc::syscall(libc::SYS_capget, &raw mut h, d.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(d[0].effective, d[1].effective),
        permitted: join(d[0].permitted, d[1].permitted),
        inheritable: join(d[0].inheritable, d[1].inheritable),
    })
}

fn set(sets: CapSets) -> io::Result<()> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |m: u64| (m as u32, (m >> 32) as u32);
    let (e0, e1) = split(sets.effective);
    let (p0, p1) = split(sets.permitted);
    let (i0, i1) = split(sets.inheritable);
    let d = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: as in `current`; the kernel only reads `d`.
    let r = unsafe { libc::syscall(libc::SYS_capset, &raw mut h, d.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(op: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An unprivileged user to become.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: libc::uid_t,
    /// Its primary gid.
    pub gid: libc::gid_t,
}

impl User {
    /// Look `name` up in the user database.
    ///
    /// # Errors
    /// No such user (the message names it).
    pub fn lookup(name: &str) -> io::Result<User> {
        let c = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwnam_r with valid buffers; `out` points into `pw` on success.
        let r = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &raw mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &raw mut out,
            )
        };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        if out.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no user {name:?} in the user database (--user)"),
            ));
        }
        if pw.pw_uid == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--user {name:?} is root (uid 0): give an unprivileged user"),
            ));
        }
        Ok(User {
            name: name.to_owned(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

/// Give `path` and, for a directory, everything under it (not following symlinks) to
/// `user`: the state directory the daemon writes after switching.
///
/// # Errors
/// A chown fails (the message names the path).
pub fn chown_tree(path: &Path, user: &User) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| io::Error::new(e.kind(), format!("chown {}: {e}", path.display())))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// What [`drop_privileges`] left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The user now running the daemon, if it switched.
    pub user: Option<String>,
    /// The capability sets now.
    pub sets: CapSets,
}

fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

/// Keep only `keep` (of what the process has) and become `user` if given. Call before
/// any thread is started.
///
/// # Errors
/// A step fails (the message says which); the process should then not go on.
pub fn drop_privileges(keep: &[u32], user: Option<&User>) -> io::Result<Dropped> {
    let ctx =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let before = current().map_err(ctx("reading capabilities"))?;
    let keep = mask(keep) & before.permitted;
    // 1. Bounding set: only what is kept can ever come back.
    let mut left_in_bounding = Vec::new();
    for cap in 0..=last_cap() {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        if prctl(libc::PR_CAPBSET_READ, cap.into(), 0).unwrap_or(0) == 1
            && prctl(libc::PR_CAPBSET_DROP, cap.into(), 0).is_err()
        {
            left_in_bounding.push(cap_name(cap));
        }
    }
    if !left_in_bounding.is_empty() {
        warn!(caps = ?left_in_bounding, "cannot shrink the capability bounding set without CAP_SETPCAP; they stay out of the permitted set all the same");
    }
    // 2. No ambient capabilities (they would survive an exec and a uid change).
    if let Err(e) = prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    ) {
        warn!(error = %e, "cannot clear the ambient capabilities");
    }
    // 3. Another user, keeping the permitted set across the switch.
    if let Some(u) = user {
        prctl(libc::PR_SET_KEEPCAPS, 1, 0).map_err(ctx("PR_SET_KEEPCAPS"))?;
        let groups = [u.gid];
        // SAFETY: plain syscalls with valid arguments; glibc applies them to every thread.
        unsafe {
            if libc::setgroups(1, groups.as_ptr()) != 0 {
                return Err(ctx("setgroups")(io::Error::last_os_error()));
            }
            if libc::setresgid(u.gid, u.gid, u.gid) != 0 {
                return Err(ctx("setresgid")(io::Error::last_os_error()));
            }
            if libc::setresuid(u.uid, u.uid, u.uid) != 0 {
                return Err(ctx("setresuid")(io::Error::last_os_error()));
            }
        }
        prctl(libc::PR_SET_KEEPCAPS, 0, 0).map_err(ctx("PR_SET_KEEPCAPS"))?;
    } else if before.effective & (1u64 << CAP_SETPCAP) != 0 {
        // 3'. Staying uid 0: an exec must not regain root's capabilities.
        if let Err(e) = prctl(
            libc::PR_SET_SECUREBITS,
            SECBIT_NOROOT | SECBIT_NOROOT_LOCKED,
            0,
        ) {
            warn!(error = %e, "cannot set SECBIT_NOROOT");
        }
    }
    // 4. Permitted = effective = kept; nothing inheritable.
    set(CapSets {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })
    .map_err(ctx("capset"))?;
    // 5. No privilege from any exec.
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(ctx("PR_SET_NO_NEW_PRIVS"))?;
    let after = current().map_err(ctx("reading capabilities back"))?;
    if after.permitted & !keep != 0 || after.effective & !keep != 0 {
        return Err(io::Error::other(format!(
            "capabilities still held after the drop: {after:?}"
        )));
    }
    let kept: Vec<String> = (0..64)
        .filter(|c| keep & (1u64 << c) != 0)
        .map(cap_name)
        .collect();
    info!(user = user.map(|u| u.name.as_str()), kept = ?kept, "privileges dropped");
    Ok(Dropped {
        user: user.map(|u| u.name.clone()),
        sets: after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_names() {
        assert_eq!(mask(&[CAP_NET_RAW, CAP_BPF]), (1 << 13) | (1 << 39));
        assert_eq!(cap_name(CAP_NET_RAW), "CAP_NET_RAW");
        assert_eq!(cap_name(63), "capability 63");
    }

    #[test]
    fn lookup_refuses_unknown_and_root() {
        let e = User::lookup("no-such-user-sonde-test").unwrap_err();
        assert!(e.to_string().contains("no-such-user-sonde-test"), "{e}");
        let e = User::lookup("root").unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
        if let Ok(n) = User::lookup("nobody") {
            assert_ne!(n.uid, 0);
        }
    }

    #[test]
    fn reads_own_capabilities() {
        let c = current().unwrap();
        assert_eq!(c.effective & !c.permitted, 0, "effective within permitted");
    }
}
