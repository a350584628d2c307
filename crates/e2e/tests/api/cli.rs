//! The real binaries: `--help` documents every setting, and a server started without a broker
//! keeps retrying without ever printing the AMQP password.

use kv_e2e::server::binaries;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn help_of(binary: &Path) -> String {
    let output = Command::new(binary)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn help_lists_every_setting_with_its_variable_and_default() {
    let front = help_of(&binaries().await.front);
    for expected in [
        "AMQP_URL",
        "KV_QUEUE",
        "kv.requests",
        "FRONT_LISTEN",
        "127.0.0.1:8080",
        "RPC_TIMEOUT_MS",
        "5000",
        "BODY_LIMIT_BYTES",
        "65536",
        "HEADER_READ_TIMEOUT_MS",
        "BODY_READ_TIMEOUT_MS",
        "LOG_FORMAT",
        "10000",
        "MAX_CONNECTIONS",
        "1000",
        "CONFIG_FILE",
        "API_TOKENS_FILE",
        "AMQP_PASSWORD_FILE",
        "AMQP_CA_FILE",
        "AMQP_CERT_FILE",
        "AMQP_KEY_FILE",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
    ] {
        assert!(
            front.contains(expected),
            "front-server --help lacks {expected}:\n{front}"
        );
    }
    let back = help_of(&binaries().await.back);
    for expected in [
        "AMQP_URL",
        "KV_QUEUE",
        "DB_PATH",
        "kv.db",
        "PREFETCH",
        "256",
        "MAX_REDELIVERIES",
        "LOG_FORMAT",
        "ADMIN_LISTEN",
        "127.0.0.1:8081",
        "CONFIG_FILE",
        "AMQP_PASSWORD_FILE",
        "AMQP_CA_FILE",
        "AMQP_CERT_FILE",
        "AMQP_KEY_FILE",
    ] {
        assert!(
            back.contains(expected),
            "back-server --help lacks {expected}:\n{back}"
        );
    }
}

#[tokio::test]
async fn a_server_without_a_broker_retries_and_never_logs_the_password() {
    // Blocking reads below are fine: nothing else runs on this test's runtime.
    let mut child = Command::new(&binaries().await.front)
        .env("AMQP_URL", "amqp://alice:hunter2@127.0.0.1:1/%2f")
        .env("FRONT_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start front-server");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    let mut log = String::new();
    let mut retries = 0;
    while retries < 3 && started.elapsed() < Duration::from_secs(20) {
        let line = lines.next().expect("the server keeps logging").unwrap();
        retries += usize::from(line.contains("cannot connect to RabbitMQ"));
        log.push_str(&line);
        log.push('\n');
    }
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();

    assert!(
        still_running,
        "the server exited instead of retrying:\n{log}"
    );
    assert_eq!(retries, 3, "{log}");
    assert!(
        log.contains("alice@127.0.0.1:1"),
        "the log should say where it connects:\n{log}"
    );
    assert!(!log.contains("hunter2"), "the password leaked:\n{log}");
}

#[tokio::test]
async fn an_unreadable_password_file_stops_either_server_at_start_naming_it() {
    let binaries = binaries().await;
    for binary in [&binaries.front, &binaries.back] {
        let output = Command::new(binary)
            .env_remove("CONFIG_FILE")
            .env("AMQP_URL", "amqp://kv@127.0.0.1:1/kv")
            .env("AMQP_PASSWORD_FILE", "/nonexistent/amqp-password")
            .env("FRONT_LISTEN", "127.0.0.1:0")
            .env("ADMIN_LISTEN", "127.0.0.1:0")
            .env("DB_PATH", "/nonexistent/kv.db")
            .output()
            .expect("run the server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{}: {stderr}", binary.display());
        assert!(
            stderr.contains("AMQP_PASSWORD_FILE /nonexistent/amqp-password"),
            "{}: {stderr}",
            binary.display()
        );
    }
}

/// Runs `binary` with settings that would otherwise let it start, plus `env`, and returns its
/// stderr once it has exited, which it must, with a failure.
fn refused_start(binary: &Path, env: &[(&str, &str)]) -> String {
    let output = Command::new(binary)
        .env_remove("CONFIG_FILE")
        .env("AMQP_URL", "amqps://kv@127.0.0.1:1/kv")
        .env("FRONT_LISTEN", "127.0.0.1:0")
        .env("ADMIN_LISTEN", "127.0.0.1:0")
        .env("DB_PATH", "/nonexistent/kv.db")
        .envs(env.iter().copied())
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{}: {stderr}", binary.display());
    stderr
}

#[tokio::test]
async fn a_bad_tls_file_stops_either_server_at_start_naming_it() {
    let binaries = binaries().await;
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "not a certificate\n").unwrap();
    let not_pem = not_pem.path().to_str().unwrap();
    for binary in [&binaries.front, &binaries.back] {
        let stderr = refused_start(binary, &[("AMQP_CA_FILE", "/nonexistent/ca.pem")]);
        assert!(
            stderr.contains("AMQP_CA_FILE /nonexistent/ca.pem"),
            "{stderr}"
        );
        let stderr = refused_start(binary, &[("AMQP_CA_FILE", not_pem)]);
        assert!(
            stderr.contains(&format!("AMQP_CA_FILE {not_pem}")),
            "{stderr}"
        );
        let stderr = refused_start(binary, &[("AMQP_CERT_FILE", not_pem)]);
        assert!(
            stderr.contains("AMQP_CERT_FILE is set without AMQP_KEY_FILE"),
            "{stderr}"
        );
    }
    let front = &binaries.front;
    let stderr = refused_start(front, &[("TLS_CERT_FILE", not_pem)]);
    assert!(
        stderr.contains("TLS_CERT_FILE is set without TLS_KEY_FILE"),
        "{stderr}"
    );
    let stderr = refused_start(front, &[("TLS_KEY_FILE", not_pem)]);
    assert!(
        stderr.contains("TLS_KEY_FILE is set without TLS_CERT_FILE"),
        "{stderr}"
    );
    let stderr = refused_start(
        front,
        &[
            ("TLS_CERT_FILE", not_pem),
            ("TLS_KEY_FILE", "/nonexistent/key.pem"),
        ],
    );
    assert!(
        stderr.contains(&format!("TLS_CERT_FILE {not_pem}")),
        "{stderr}"
    );
}
