//! TLS on both links: to RabbitMQ (`amqps://`, a node of its own that speaks only AMQPS) and from
//! clients to the front-server (HTTPS). A test binary of its own, since it starts RabbitMQ nodes
//! (ports 5711 to 5713, distribution 25711 to 25713) beside the system broker; it changes nothing
//! on the system broker, so it holds the broker lock shared.

use kv_e2e::app::{Lock, eventually, lock_broker};
use kv_e2e::server::ServerProcess;
use kv_e2e::system::System;
use kv_e2e::tls::{Pki, TlsNode};
use kv_protocol::QueueType;
use std::io::Read;
use std::time::{Duration, Instant};

/// Runs `curl` with `args` and returns whether it succeeded and what it printed (the body, then
/// the status on a line of its own).
async fn curl(args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("run curl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Waits until `process` has logged `needle` at least `times` times.
async fn wait_for_log_lines(process: &ServerProcess, needle: &str, times: usize) -> Vec<String> {
    eventually(
        &format!("{} logs {needle:?} {times} times", process.name()),
        || async {
            let lines: Vec<String> = process
                .log()
                .lines()
                .filter(|line| line.contains(needle))
                .map(str::to_owned)
                .collect();
            if lines.len() >= times {
                Ok(lines)
            } else {
                Err(process.log())
            }
        },
    )
    .await
}

#[tokio::test]
async fn the_system_works_over_amqps_with_the_ca_file_and_the_front_serves_https() {
    let _lock = lock_broker(Lock::Shared);
    let pki = Pki::generate();
    let node = TlsNode::start(5711, &pki.ca(), &pki.server());
    let mut system = System::new(&node.url("localhost"), 1, QueueType::Classic);
    let ca = pki.ca();
    system
        .env
        .push(("AMQP_CA_FILE".into(), ca.to_str().unwrap().into()));
    let server = pki.server();

    let back = system.start_back(0, &[]).await;
    let front = system
        .start_process(
            "front-server",
            &[
                ("TLS_CERT_FILE", server.cert.to_str().unwrap()),
                ("TLS_KEY_FILE", server.key.to_str().unwrap()),
                ("HEADER_READ_TIMEOUT_MS", "1000"),
            ],
        )
        .await;
    let address = front.wait_for_address("listening").await;
    front.wait_for_log("ready: publishing to RabbitMQ").await;
    let port = address.rsplit(':').next().unwrap();
    let https = format!("https://localhost:{port}/api");
    let ca_arg = ca.to_str().unwrap();

    // Both servers went through TLS, and say so with amqps:// (without the password).
    for process in [&back, &front] {
        let line = process.wait_for_log("connected to RabbitMQ").await;
        assert!(line.contains("amqps://guest@localhost:5711/%2f"), "{line}");
        assert!(!process.log().contains("guest:guest"), "{}", process.log());
    }
    let listing = node.ctl(&["list_connections", "name", "ssl"]);
    let connections: Vec<&str> = listing.lines().filter(|l| l.contains("->")).collect();
    assert!(
        connections.len() >= 2 && connections.iter().all(|l| l.ends_with("true")),
        "{listing}"
    );

    let (ok, posted) = curl(&[
        "--cacert",
        ca_arg,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"tls-key": 42.5}"#,
        &https,
    ])
    .await;
    assert!(ok && posted.ends_with("\n200"), "{posted}");
    let (ok, read) = curl(&["--cacert", ca_arg, &format!("{https}?key=tls-key")]).await;
    assert!(ok && read.ends_with("\n200"), "{read}");
    assert!(
        read.starts_with(r#"{"success":true,"data":42.5}"#),
        "{read}"
    );

    // A client that does not trust the authority is refused by its own TLS.
    let (ok, refused) = curl(&[&format!("{https}?key=tls-key")]).await;
    assert!(!ok, "{refused}");

    // Plain HTTP to the HTTPS port gets no HTTP answer: the handshake fails, the connection ends.
    let (ok, plain) = curl(&[&format!("http://127.0.0.1:{port}/api?key=tls-key")]).await;
    assert!(!ok && plain.ends_with("\n000"), "{plain}");

    // A client that connects and never starts the handshake is cut off by the header read
    // timeout, so it cannot hold a connection slot.
    let mut idle =
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let read = idle.read(&mut [0u8; 16]);
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (ok, again) = curl(&["--cacert", ca_arg, &format!("{https}?key=tls-key")]).await;
    assert!(ok && again.ends_with("\n200"), "{again}");
}

/// The line a server logs for each refused try.
const REFUSED: &str = "TLS handshake failed, a certificate problem";

/// Starts `binary` of `system` with `extra`, waits until it has been refused twice (a retry), and
/// checks it never connected; returns the refusals.
async fn refused_twice(
    system: &System,
    binary: &'static str,
    extra: &[(&str, &str)],
) -> Vec<String> {
    let mut process = system.start_process(binary, extra).await;
    let lines = wait_for_log_lines(&process, REFUSED, 2).await;
    let log = process.log();
    assert!(!log.contains("connected to RabbitMQ"), "{log}");
    assert!(log.contains("no RabbitMQ node answered; retrying"), "{log}");
    assert!(process.is_running(), "{log}");
    process.kill().await;
    for line in &lines {
        println!("{binary}: {line}");
    }
    lines
}

#[tokio::test]
async fn broker_certificates_that_do_not_verify_are_refused_and_retried_never_in_clear_text() {
    let _lock = lock_broker(Lock::Shared);
    let pki = Pki::generate();
    let node = TlsNode::start(5712, &pki.ca(), &pki.server());
    let system = System::new(&node.url("localhost"), 1, QueueType::Classic);
    let ca = pki.ca();
    let other_ca = pki.other_ca();
    let db = system.db_path(0);
    let back_settings = [("KV_PARTITION", "0"), ("DB_PATH", db.to_str().unwrap())];

    // Signed by an authority the server was not told to trust (nor the system).
    let lines = refused_twice(
        &system,
        "front-server",
        &[("AMQP_CA_FILE", other_ca.to_str().unwrap())],
    )
    .await;
    assert!(
        lines[0].contains("amqps://guest@localhost:5712/%2f"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("UnknownIssuer"), "{}", lines[0]);
    let mut with_ca = vec![("AMQP_CA_FILE", ca.to_str().unwrap())];
    with_ca.extend(back_settings);
    let back_with_other_ca = [
        ("AMQP_CA_FILE", other_ca.to_str().unwrap()),
        back_settings[0],
        back_settings[1],
    ];
    let lines = refused_twice(&system, "back-server", &back_with_other_ca).await;
    assert!(lines[0].contains("UnknownIssuer"), "{}", lines[0]);

    // Expired.
    node.serve_certificate(&pki.expired());
    let lines = refused_twice(&system, "front-server", &with_ca[..1]).await;
    assert!(lines[0].to_lowercase().contains("expired"), "{}", lines[0]);

    // For another host name.
    node.serve_certificate(&pki.other_host());
    let lines = refused_twice(&system, "back-server", &with_ca).await;
    assert!(lines[0].contains("not valid for name"), "{}", lines[0]);

    // The same node and authority with the good certificate back: the refusals were the
    // certificates', not the setup's.
    node.serve_certificate(&pki.server());
    let front = system.start_process("front-server", &with_ca[..1]).await;
    front.wait_for_log("ready: publishing to RabbitMQ").await;
}

#[tokio::test]
async fn a_broker_that_asks_for_a_client_certificate_gets_the_one_of_amqp_cert_file() {
    let _lock = lock_broker(Lock::Shared);
    let pki = Pki::generate();
    let node = TlsNode::start_with(5713, &pki.ca(), &pki.server(), true);
    let system = System::new(&node.url("127.0.0.1"), 1, QueueType::Classic);
    let ca = pki.ca();
    let client = pki.client();
    let ca_only = [("AMQP_CA_FILE", ca.to_str().unwrap())];

    // Without one, the broker ends the connection (with TLS 1.3 after the handshake, so the
    // client sees a reset, not an alert): a failed try, retried.
    let mut without = system.start_process("front-server", &ca_only).await;
    let lines = wait_for_log_lines(&without, "cannot connect to RabbitMQ", 2).await;
    println!("front-server: {}", lines[0]);
    assert!(
        !without.log().contains("connected to RabbitMQ"),
        "{}",
        without.log()
    );
    without.kill().await;

    // With it (and an IP address in the URL, which the server certificate lists), it connects.
    let with = system
        .start_process(
            "front-server",
            &[
                ca_only[0],
                ("AMQP_CERT_FILE", client.cert.to_str().unwrap()),
                ("AMQP_KEY_FILE", client.key.to_str().unwrap()),
            ],
        )
        .await;
    let line = with.wait_for_log("connected to RabbitMQ").await;
    assert!(line.contains("amqps://guest@127.0.0.1:5713/%2f"), "{line}");
    with.wait_for_log("ready: publishing to RabbitMQ").await;
}
