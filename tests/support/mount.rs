//! A small tmpfs mounted for one test (disk full, read-only state directory), unmounted on
//! drop. Needs root (CAP_SYS_ADMIN); callers fall back or skip with a message when it is `None`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Mount(PathBuf);

impl Mount {
    /// `None` when this process may not mount (not root, or no CAP_SYS_ADMIN).
    pub fn tmpfs(at: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "fieldlink-test"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }

    /// Remounts with `options` (e.g. "ro"), as a failing SD card remounts itself.
    pub fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
