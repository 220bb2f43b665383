//! The bearer token that guards mutating API calls: 32 random bytes, hex, kept in a
//! file only root (or the file's group) can read. The CLI reads the same file.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rand::TryRngCore;

/// Longest token accepted from a file (a generated one is 64 characters).
pub const MAX_TOKEN_LEN: usize = 1024;

/// Why the token file could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading, creating or writing the file (or its directory) failed.
    #[error("token file {}: {what}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The file exists but holds no usable token.
    #[error("token file {}: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Anyone may read or write the file: the token would be no secret.
    #[error("token file {}: mode {mode:04o} gives other users access; expected 0600 (or 0640)", path.display())]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The operating system's random source failed.
    #[error("cannot generate a token: {0}")]
    Random(String),
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> TokenError + 'a {
    move |source| TokenError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Read the token in `path` (surrounding whitespace ignored).
///
/// # Errors
/// The file cannot be read, is empty, too long or holds characters other than visible
/// ASCII.
pub fn read(path: &Path) -> Result<String, TokenError> {
    let text = fs::read(path).map_err(io_err(path, "cannot read"))?;
    let invalid = |why: &str| TokenError::Invalid {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let text = String::from_utf8(text).map_err(|_| invalid("not text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid("empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid("longer than 1024 characters"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("holds spaces or control characters"));
    }
    Ok(token.to_owned())
}

/// The daemon's token: read from `path`, or, when the file does not exist, 32 random
/// bytes as 64 hex characters written to a new file of mode 0600 (creating a missing
/// parent directory with mode 0700).
///
/// A file that other users may read or write is refused ([`TokenError::Exposed`]);
/// group access is allowed (for an operators' group using the CLI).
///
/// # Errors
/// See [`TokenError`].
pub fn load_or_create(path: &Path) -> Result<String, TokenError> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.mode() & 0o7777;
            if mode & 0o007 != 0 {
                return Err(TokenError::Exposed {
                    path: path.to_owned(),
                    mode,
                });
            }
            read(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path),
        Err(e) => Err(io_err(path, "cannot inspect")(e)),
    }
}

fn create(path: &Path) -> Result<String, TokenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir, "cannot create directory"))?;
        }
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| TokenError::Random(e.to_string()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        // Another process created it between our check and now: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return read(path),
        Err(e) => return Err(io_err(path, "cannot create")(e)),
    };
    // The umask may have cleared bits, never added: still set 0600 explicitly.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err(path, "cannot set mode 0600"))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(path, "cannot write"))?;
    Ok(token)
}

/// Whether `a == b`, in time that depends only on the lengths (not on where the
/// first difference is).
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether an `Authorization` header value carries `token` as a bearer token
/// (scheme case-insensitive).
#[must_use]
pub fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sonde-token-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_then_reads_back() {
        let dir = temp_dir("create");
        let path = dir.join("sub").join("token");
        let t = load_or_create(&path).unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(load_or_create(&path).unwrap(), t);
        assert_eq!(read(&path).unwrap(), t);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_exposed_or_bad_files() {
        let dir = temp_dir("bad");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        fs::write(&path, "secret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(TokenError::Exposed { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), "secret");
        fs::write(&path, "  \n").unwrap();
        assert!(matches!(read(&path), Err(TokenError::Invalid { .. })));
        fs::write(&path, "a b").unwrap();
        assert!(matches!(read(&path), Err(TokenError::Invalid { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
        assert!(bearer_matches(Some("Bearer abc"), "abc"));
        assert!(bearer_matches(Some("bearer  abc "), "abc"));
        assert!(!bearer_matches(Some("Basic abc"), "abc"));
        assert!(!bearer_matches(Some("Bearer abd"), "abc"));
        assert!(!bearer_matches(Some("Bearer"), "abc"));
        assert!(!bearer_matches(None, "abc"));
    }
}
