//! TLS for the tests: certificates made with the `openssl` command, and a RabbitMQ node that
//! speaks only AMQPS, beside the system broker (as `scripts/cluster` runs its nodes).
//!
//! - [`Pki`]: a certificate authority and, signed by it, a good server certificate for
//!   `localhost` and 127.0.0.1, an expired one, and one for another host name; plus a second,
//!   unrelated authority. Files readable by the broker's user, deleted with the value.
//! - [`TlsNode`]: node `kvtls<port>@localhost`, AMQPS on 127.0.0.1:`port` and nothing else
//!   (`listeners.tcp = none`), with the certificate of its choice; stopped when dropped. Its
//!   certificate can be swapped while it runs ([`TlsNode::serve_certificate`]): RabbitMQ reads the
//!   files again for new connections once Erlang's PEM cache is cleared.
//!
//! Needs root (the node runs as user `rabbitmq`, like the system broker) and Debian's
//! rabbitmq-server package.

use crate::PATIENCE;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The certificates of a test, in a directory of their own.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// Makes the authorities and certificates; fails the test if `openssl` does.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The broker runs as user rabbitmq and reads the files from here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pki = Self { dir };
        for ca in ["ca", "other-ca"] {
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=kv test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        pki.sign("server", "localhost", "DNS:localhost,IP:127.0.0.1", "2");
        // notAfter a day before now: expired the moment it is made.
        pki.sign("expired", "localhost", "DNS:localhost,IP:127.0.0.1", "-1");
        pki.sign("other-host", "rabbit.example", "DNS:rabbit.example", "2");
        pki.sign("client", "kv-client", "DNS:kv-client", "2");
        for entry in std::fs::read_dir(pki.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        pki
    }

    /// A key and a certificate for `name` (with `alt_names`), signed by `ca`, valid `days`.
    fn sign(&self, name: &str, common_name: &str, alt_names: &str, days: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.path().join(&ext),
            format!("subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl: these tests make their certificates with it");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The authority that signed every server certificate here.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// An authority that signed none of them.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// Valid, for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Pair {
        self.pair("server")
    }

    /// For `localhost` and 127.0.0.1, but expired.
    pub fn expired(&self) -> Pair {
        self.pair("expired")
    }

    /// Valid, but for `rabbit.example` only.
    pub fn other_host(&self) -> Pair {
        self.pair("other-host")
    }

    /// A client certificate signed by the authority, for a broker that asks for one.
    pub fn client(&self) -> Pair {
        self.pair("client")
    }

    fn pair(&self, name: &str) -> Pair {
        Pair {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
        }
    }
}

/// A RabbitMQ node that accepts AMQPS only; see the module docs.
pub struct TlsNode {
    name: String,
    port: u16,
    dir: tempfile::TempDir,
    launcher: std::process::Child,
}

impl TlsNode {
    /// Starts the node with AMQPS on 127.0.0.1:`port` (Erlang distribution on `port` + 20000)
    /// serving `certificate`, and waits until it accepts connections.
    pub fn start(port: u16, ca: &Path, certificate: &Pair) -> Self {
        Self::start_with(port, ca, certificate, false)
    }

    /// As [`TlsNode::start`], and with `client_certificates` the node refuses a client that does
    /// not present a certificate signed by `ca`.
    pub fn start_with(port: u16, ca: &Path, certificate: &Pair, client_certificates: bool) -> Self {
        let name = format!("kvtls{port}@localhost");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let base = dir.path();
        std::fs::create_dir_all(base.join("mnesia")).unwrap();
        std::fs::create_dir_all(base.join("log")).unwrap();
        // Copies, so that the certificate can be swapped while the node runs.
        std::fs::copy(ca, base.join("ca.pem")).unwrap();
        std::fs::copy(&certificate.cert, base.join("cert.pem")).unwrap();
        std::fs::copy(&certificate.key, base.join("key.pem")).unwrap();
        std::fs::write(
            base.join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {base}/ca.pem\n\
                 ssl_options.certfile = {base}/cert.pem\n\
                 ssl_options.keyfile = {base}/key.pem\n\
                 ssl_options.verify = {verify}\n\
                 ssl_options.fail_if_no_peer_cert = {client_certificates}\n\
                 loopback_users = none\n",
                base = base.display(),
                verify = if client_certificates {
                    "verify_peer"
                } else {
                    "verify_none"
                },
            ),
        )
        .unwrap();
        std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(base)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown the node's directory to rabbitmq");
        let log = std::fs::File::create(base.join("log/startup.log")).unwrap();
        let launcher = Command::new("setsid")
            .arg("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_DIST_PORT", (u32::from(port) + 20000).to_string())
            .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                base.join("advanced.config"),
            )
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_PID_FILE", base.join("pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                base.join("enabled_plugins"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start rabbitmq-server: these tests need Debian's rabbitmq-server package");
        let mut node = Self {
            name,
            port,
            dir,
            launcher,
        };
        node.await_listening();
        node
    }

    fn await_listening(&mut self) {
        // Booting a node takes seconds, more on a loaded machine.
        let deadline = Instant::now() + PATIENCE * 4;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.launcher.try_wait() {
                panic!(
                    "{} exited ({status}) while starting:\n{}",
                    self.name,
                    self.startup_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on 127.0.0.1:{} in time:\n{}",
                self.name,
                self.port,
                self.startup_log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn startup_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/startup.log")).unwrap_or_default()
    }

    /// The node's name, for `rabbitmqctl -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of this node with the stock account and `host` (`localhost` or 127.0.0.1).
    pub fn url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.port)
    }

    /// From now on, new connections get `certificate`.
    pub fn serve_certificate(&self, certificate: &Pair) {
        let base = self.dir.path();
        std::fs::copy(&certificate.cert, base.join("cert.pem")).unwrap();
        std::fs::copy(&certificate.key, base.join("key.pem")).unwrap();
        self.ctl(&["eval", "ssl:clear_pem_cache()."]);
    }

    /// Runs `rabbitmqctl` against this node (as user rabbitmq, for its Erlang cookie) and
    /// returns its output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = Command::new("timeout")
            .args(["60", "runuser", "-u", "rabbitmq", "--"])
            .arg("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .args(["-q", "-n", &self.name])
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "rabbitmqctl -n {} {args:?}: {text}{}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        text
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["60", "runuser", "-u", "rabbitmq", "--"])
            .arg("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .args(["-q", "-n", &self.name, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
    }
}
