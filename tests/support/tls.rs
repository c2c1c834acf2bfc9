//! Certificates made by `openssl` at test time, and a mosquitto that requires client
//! certificates on several TLS listeners (one per server certificate) plus a plain anonymous
//! listener for the test's own subscribers.
//!
//! The lab holds: a CA; a second, unrelated CA (for "unknown issuer"); server certificates
//! for `localhost`/127.0.0.1 (good), for another name, and an expired one; client
//! certificates for `gw1` in X.509 v3 (with an extensions file), v1 (what `openssl x509 -req`
//! makes without one, which mosquitto accepts), expired, and one whose key is another's.
//! Needs `openssl` and `mosquitto_passwd` (from the mosquitto package).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub struct TlsLab {
    pub dir: tempfile::TempDir,
}

/// Which server certificate a listener presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCert {
    Good,
    WrongName,
    Expired,
}

/// Which client certificate the agent presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    V3,
    V1,
    Expired,
    /// The v1 certificate with the v3 certificate's key: they do not belong together.
    V1WithWrongKey,
}

impl TlsLab {
    pub fn new() -> TlsLab {
        let dir = tempfile::tempdir().unwrap();
        let lab = TlsLab { dir };
        lab.make();
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{} is needed for the TLS tests: {e}", args[0]));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }

    fn key_and_csr(&self, name: &str, subject: &str) {
        let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
        self.run(&[
            "openssl",
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ]);
    }

    fn self_signed_ca(&self, name: &str, subject: &str) {
        self.run(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            subject,
        ]);
    }

    /// Signs `name.csr` with the CA for two days; `ext` None makes a v1 certificate.
    fn sign(&self, name: &str, ext: Option<&str>) {
        let (csr, pem) = (format!("{name}.csr"), format!("{name}.pem"));
        let mut args = vec![
            "openssl",
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
        ];
        let ext_file = format!("{name}.ext");
        if let Some(ext) = ext {
            self.write(&ext_file, ext);
            args.extend(["-extfile", &ext_file]);
        }
        self.run(&args);
    }

    /// Signs `name.csr` with a validity that ended in 2020 (`openssl ca` can backdate).
    fn sign_expired(&self, name: &str, ext: &str) {
        self.write(
            "ca.cnf",
            "[ca]\ndefault_ca = lab\n[lab]\ndatabase = index.txt\nnew_certs_dir = .\n\
             serial = ca.serial\ndefault_md = sha256\npolicy = any\n[any]\n\
             commonName = supplied\n",
        );
        self.write("index.txt", "");
        if !self.path("ca.serial").exists() {
            self.write("ca.serial", "1000\n");
        }
        let ext_file = format!("{name}.ext");
        self.write(&ext_file, ext);
        self.run(&[
            "openssl",
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.pem"),
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-extfile",
            &ext_file,
        ]);
    }

    fn make(&self) {
        self.self_signed_ca("ca", "/CN=fieldlink test CA");
        self.self_signed_ca("other-ca", "/CN=some other CA");
        let server = "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
        self.key_and_csr("server", "/CN=localhost");
        self.sign("server", Some(server));
        self.key_and_csr("server-wrong-name", "/CN=other.example");
        self.sign(
            "server-wrong-name",
            Some("subjectAltName=DNS:other.example\n"),
        );
        self.key_and_csr("server-expired", "/CN=localhost");
        self.sign_expired("server-expired", server);

        let client = "extendedKeyUsage=clientAuth\n";
        self.key_and_csr("client", "/CN=gw1");
        self.sign("client", Some(client));
        self.key_and_csr("client-v1", "/CN=gw1");
        self.sign("client-v1", None);
        self.key_and_csr("client-expired", "/CN=gw1");
        self.sign_expired("client-expired", client);

        self.run(&["mosquitto_passwd", "-b", "-c", "passwd", "gw1", "s3cret"]);
        self.write("password", "s3cret\n");
        self.write("wrong-password", "nope\n");

        // mosquitto started as root drops to its own user: let it read the lab's files.
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `(client_cert, client_key)` for `which`.
    pub fn client(&self, which: ClientCert) -> (PathBuf, PathBuf) {
        let (cert, key) = match which {
            ClientCert::V3 => ("client.pem", "client.key"),
            ClientCert::V1 => ("client-v1.pem", "client-v1.key"),
            ClientCert::Expired => ("client-expired.pem", "client-expired.key"),
            ClientCert::V1WithWrongKey => ("client-v1.pem", "client.key"),
        };
        (self.path(cert), self.path(key))
    }

    /// The certificate's X.509 version, as `openssl x509 -text` prints it.
    pub fn version_of(&self, cert: &Path) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.trim_start().starts_with("Version:"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Default for TlsLab {
    fn default() -> Self {
        TlsLab::new()
    }
}

/// mosquitto with one TLS listener per [`ServerCert`] (each wanting a client certificate
/// from the lab's CA and the password of `gw1`), and a plain anonymous listener.
pub struct TlsBroker {
    pub plain_port: u16,
    ports: Vec<(ServerCert, u16)>,
    child: Child,
}

impl TlsBroker {
    pub fn start(lab: &TlsLab) -> TlsBroker {
        // A port is only reserved once mosquitto binds it: should another test have taken
        // one meanwhile, take others.
        for _ in 0..5 {
            match TlsBroker::try_start(lab) {
                Ok(broker) => return broker,
                Err(e) => eprintln!("{e}; trying other ports"),
            }
        }
        panic!("mosquitto could not listen on 5 sets of free ports");
    }

    fn try_start(lab: &TlsLab) -> Result<TlsBroker, String> {
        let d = lab.dir.path().display().to_string();
        let mut conf =
            "per_listener_settings true\npersistence false\nlog_dest stderr\nlog_type error\n"
                .to_string();
        let mut ports = Vec::new();
        for (which, cert) in [
            (ServerCert::Good, "server"),
            (ServerCert::WrongName, "server-wrong-name"),
            (ServerCert::Expired, "server-expired"),
        ] {
            let port = super::broker::listen_port();
            conf.push_str(&format!(
                "listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/{cert}.pem\n\
                 keyfile {d}/{cert}.key\nrequire_certificate true\nallow_anonymous false\n\
                 password_file {d}/passwd\n"
            ));
            ports.push((which, port));
        }
        let plain_port = super::broker::listen_port();
        conf.push_str(&format!(
            "listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
        ));
        let conf_path = lab.path("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf_path);
        // mosquitto opens its listeners in order: the last one up means all are.
        let child = super::broker::spawn_listening(&mut cmd, plain_port)?;
        Ok(TlsBroker {
            plain_port,
            ports,
            child,
        })
    }

    /// The TLS listener presenting `which`.
    pub fn port(&self, which: ServerCert) -> u16 {
        self.ports
            .iter()
            .find(|(w, _)| *w == which)
            .map(|(_, p)| *p)
            .unwrap()
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
