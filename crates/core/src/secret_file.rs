//! Files that hold secrets (password hashes, keys, tokens): written whole,
//! through a temporary file renamed over the old one (a crash leaves one
//! version or the other, never half of one), and readable by their owner
//! only.

use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_and_only_its_owner_reads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        super::write(&path, b"one").expect("written");
        super::write(&path, b"two").expect("rewritten");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }
}
