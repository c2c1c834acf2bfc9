//! The MQTT password: where it lives and how it is read. Read at every connect, so a rotated
//! secret is picked up without a restart; relative paths name systemd credentials.
//!
//! Owns that file and nothing else; `mqtt` puts the password into the CONNECT.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where the password lives: an absolute `password_file` as is; a relative one names a
/// systemd credential (`LoadCredential=NAME:…`) under `$CREDENTIALS_DIRECTORY` when that is
/// set, else a path relative to the working directory.
pub fn password_path(file: &Path) -> PathBuf {
    resolve_password_path(file, std::env::var_os("CREDENTIALS_DIRECTORY").as_deref())
}

fn resolve_password_path(file: &Path, credentials_dir: Option<&std::ffi::OsStr>) -> PathBuf {
    match credentials_dir {
        Some(dir) if file.is_relative() => Path::new(dir).join(file),
        _ => file.to_path_buf(),
    }
}

/// The password in `file`; one trailing newline (or CRLF) is not part of it.
pub fn read_password(file: &Path) -> anyhow::Result<String> {
    let path = password_path(file);
    let raw = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the MQTT password from {} (mqtt.password_file); check the path and \
             that the fieldlink user may read it",
            path.display()
        )
    })?;
    let password = raw.strip_suffix('\n').unwrap_or(&raw);
    Ok(password.strip_suffix('\r').unwrap_or(password).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_password_file_is_a_systemd_credential_when_the_directory_is_set() {
        let creds = Some(std::ffi::OsStr::new("/run/credentials/fieldlink.service"));
        assert_eq!(
            resolve_password_path(Path::new("/etc/fieldlink/pw"), creds),
            PathBuf::from("/etc/fieldlink/pw")
        );
        assert_eq!(
            resolve_password_path(Path::new("mqtt-password"), creds),
            PathBuf::from("/run/credentials/fieldlink.service/mqtt-password")
        );
        assert_eq!(
            resolve_password_path(Path::new("pw"), None),
            PathBuf::from("pw")
        );
    }

    #[test]
    fn the_password_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret \n").unwrap();
        assert_eq!(read_password(&path).unwrap(), "s3cret ");
        let err = format!(
            "{:#}",
            read_password(&dir.path().join("missing")).unwrap_err()
        );
        assert!(err.contains("mqtt.password_file"), "{err}");
    }
}
