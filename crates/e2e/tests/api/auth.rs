//! API tokens (`API_TOKENS_FILE`) against the real servers: the exact `401` and `403` answers,
//! checked before anything else of a request so that none reaches RabbitMQ; a `write` token that
//! stores and a `read` token that reads; SIGHUP revoking a token, and a bad file on SIGHUP keeping
//! the old ones; a malformed file stopping the server with the line's number; and no token ever
//! in the log (at `debug`), `/metrics` or `--help`.

use kv_e2e::app::{
    Options, TestApp, assert_failure, eventually, json, spawn_app_with, unique_queue,
};
use kv_e2e::server::{ServerProcess, binaries};
use serde_json::json;

pub const UNAUTHORIZED: &str =
    "Missing or unknown API token, must be 'Authorization: Bearer <token>'";
pub const READ_ONLY: &str = "This API token may only read, storing a value needs a 'write' token";

/// A tokens file in a directory of its own, removed when dropped.
pub struct TokensFile {
    _dir: tempfile::TempDir,
    pub path: String,
}

impl TokensFile {
    pub fn new(contents: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-tokens");
        std::fs::write(&path, contents).unwrap();
        let path = path.to_str().unwrap().to_owned();
        Self { _dir: dir, path }
    }

    pub fn replace(&self, contents: &str) {
        // Written aside and renamed, as an operator's tooling would: SIGHUP never sees half a file.
        let aside = format!("{}.new", self.path);
        std::fs::write(&aside, contents).unwrap();
        std::fs::rename(&aside, &self.path).unwrap();
    }

    /// `API_TOKENS_FILE` naming this file, for `Options::front_env`, which outlives the test.
    pub fn front_env(&self) -> &'static [(&'static str, &'static str)] {
        let path: &'static str = Box::leak(self.path.clone().into_boxed_str());
        Box::leak(Box::new([("API_TOKENS_FILE", path)]))
    }
}

/// Tokens no other test uses (they are only compared, so any printable text would do).
fn token(name: &str) -> String {
    format!("{name}-{}", unique_queue().replace('.', "-"))
}

/// `method /api` with `authorization` as the header (none if `None`).
async fn call(
    app: &TestApp,
    method: &str,
    authorization: Option<&str>,
    path_and_query: &str,
    body: &str,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(
            method.parse().unwrap(),
            format!("{}{path_and_query}", app.address),
        )
        .header("Content-Type", "application/json")
        .body(body.to_owned());
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    request.send().await.expect("answered")
}

async fn assert_unauthorized(response: reqwest::Response, what: &str) {
    assert_eq!(
        response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .collect::<Vec<_>>(),
        ["Bearer"],
        "{what}"
    );
    let (status, body) = json(response).await;
    assert_eq!(
        (status, body),
        (401, json!({"success": false, "message": UNAUTHORIZED})),
        "{what}"
    );
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401_or_403_before_any_check_and_never_reach_rabbitmq() {
    // Arrange: no back-server, so whatever reaches the queue stays there to be counted.
    let (read, write) = (token("read"), token("write"));
    let file = TokensFile::new(&format!("# test tokens\nread {read}\n\nwrite {write}\n"));
    let app = spawn_app_with(Options {
        front_env: file.front_env(),
        ..Options::front_only()
    })
    .await;
    let mut one_off = write.clone().into_bytes();
    *one_off.last_mut().unwrap() ^= 1;
    let one_off = String::from_utf8(one_off).unwrap();
    let pair = r#"{"auth-test": 1.5}"#;

    // Act and assert: each wrong credential, on reads and on writes valid and invalid alike.
    let credentials = [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {one_off}")),
        Some(format!("Bearer {}", &write[..write.len() - 1])),
        Some(format!("Bearer {write}x")),
        Some(format!("Bearer x{write}")),
        Some(format!("Basic {write}")),
        Some(write.clone()),
        Some("Bearer ".to_owned()),
    ];
    for authorization in &credentials {
        let authorization = authorization.as_deref();
        for (method, path, body) in [
            ("GET", "/api?key=auth-test", ""),
            ("GET", "/api?no=key", ""),
            ("POST", "/api", pair),
            ("POST", "/api", "not json"),
            ("POST", "/api", &"1".repeat(70_000)),
        ] {
            let what = format!("{method} {path} with {authorization:?}");
            assert_unauthorized(call(&app, method, authorization, path, body).await, &what).await;
        }
    }
    let as_reader = format!("Bearer {read}");
    for body in [pair, "not json", "{}"] {
        let response = call(&app, "POST", Some(&as_reader), "/api", body).await;
        assert!(response.headers().get("www-authenticate").is_none());
        assert_failure(response, 403, READ_ONLY).await;
    }
    assert_eq!(
        app.messages_in(&app.queue).await,
        0,
        "a refused request reached RabbitMQ"
    );

    // The write token, in any case of the scheme, is let through: the write is queued.
    let response = call(&app, "POST", Some(&format!("bearer {write}")), "/api", pair).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(app.messages_in(&app.queue).await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_write_token_stores_and_reads_and_a_read_token_reads() {
    let (read, write) = (token("read"), token("write"));
    let file = TokensFile::new(&format!("read {read}\nwrite {write}\n"));
    let app = spawn_app_with(Options {
        front_env: file.front_env(),
        ..Options::default()
    })
    .await;
    let (as_reader, as_writer) = (format!("Bearer {read}"), format!("Bearer {write}"));

    let stored = call(
        &app,
        "POST",
        Some(&as_writer),
        "/api",
        r#"{"tokened": 7.25}"#,
    )
    .await;
    let by_writer = call(&app, "GET", Some(&as_writer), "/api?key=tokened", "").await;
    let by_reader = call(&app, "GET", Some(&as_reader), "/api?key=tokened", "").await;
    let missing = call(&app, "GET", Some(&as_reader), "/api?key=nothing", "").await;
    let invalid = call(&app, "POST", Some(&as_writer), "/api", r#"{"k": "25"}"#).await;
    let health = call(&app, "GET", None, "/health", "").await;
    let metrics = call(&app, "GET", None, "/metrics", "").await;
    let docs = call(&app, "GET", None, "/openapi.json", "").await;

    assert_eq!(
        json(stored).await,
        (
            200,
            json!({"success": true, "data": "Value 7.25 stored for key 'tokened'"})
        )
    );
    assert_eq!(
        json(by_writer).await,
        (200, json!({"success": true, "data": 7.25}))
    );
    assert_eq!(
        json(by_reader).await,
        (200, json!({"success": true, "data": 7.25}))
    );
    assert_failure(missing, 404, "Value for key 'nothing' not found").await;
    assert_failure(
        invalid,
        400,
        "Acceptable only one pair key:value in JSON format, value must be a number",
    )
    .await;
    // Probes, metrics and the docs stay open.
    assert_eq!(
        [health.status(), metrics.status(), docs.status()].map(|s| s.as_u16()),
        [200, 200, 200]
    );
    app.shutdown().await;
}

/// Waits until the log holds `count` lines containing `needle`.
async fn wait_for_lines(front: &ServerProcess, needle: &str, count: usize) {
    eventually(&format!("{count} lines with {needle:?}"), || async {
        let found = front.log().lines().filter(|l| l.contains(needle)).count();
        if found >= count {
            Ok(())
        } else {
            Err(format!("{found}:\n{}", front.log()))
        }
    })
    .await
}

#[tokio::test]
async fn sighup_revokes_a_removed_token_and_a_bad_file_keeps_the_tokens_in_force() {
    // Arrange: a front-server process (no back-server: writes are answered on RabbitMQ's confirm).
    let mut app = spawn_app_with(Options::no_servers()).await;
    let (old, new, never) = (token("old"), token("new"), token("never"));
    let file = TokensFile::new(&format!("write {old}\n"));
    let mut front = app
        .start_front_process(&[("API_TOKENS_FILE", &file.path)])
        .await;
    let write_as = async |token: &str| {
        let authorization = format!("Bearer {token}");
        call(&app, "POST", Some(&authorization), "/api", r#"{"k": 1}"#)
            .await
            .status()
            .as_u16()
    };
    assert_eq!(write_as(&old).await, 200);

    // Act: the old token replaced by a new one.
    file.replace(&format!("# rotated\nwrite {new}\nread {never}\n"));
    front.signal("HUP");
    wait_for_lines(&front, "loaded the API tokens", 2).await;

    // Assert: the old token is refused, the new one works, the log gives the counts.
    assert_eq!(write_as(&old).await, 401);
    assert_eq!(write_as(&new).await, 200);
    assert_eq!(write_as(&never).await, 403);
    let loaded = front.wait_for_log("loaded the API tokens").await;
    assert!(loaded.contains("read=0 write=1"), "{loaded}");
    let reloaded = front.log();
    let reloaded = reloaded
        .lines()
        .rfind(|l| l.contains("loaded the API tokens"));
    assert!(reloaded.unwrap().contains("read=1 write=1"), "{reloaded:?}");

    // Act: a file with a bad third line.
    file.replace(&format!("write {never}\n\nread\n"));
    front.signal("HUP");
    let kept = front.wait_for_log("kept the API tokens in force").await;

    // Assert: nothing changed, and the log says where the file is wrong, without a token.
    assert!(kept.contains("ERROR"), "{kept}");
    assert!(
        kept.contains(&file.path) && kept.contains("line 3"),
        "{kept}"
    );
    assert!(!kept.contains(&never), "{kept}");
    assert_eq!(write_as(&new).await, 200);
    assert_eq!(write_as(&never).await, 403);

    // A missing file is refused the same way.
    std::fs::remove_file(&file.path).unwrap();
    front.signal("HUP");
    wait_for_lines(&front, "kept the API tokens in force", 2).await;
    assert_eq!(write_as(&new).await, 200);
    assert!(
        !front.log().contains("is open to anyone"),
        "{}",
        front.log()
    );
    front.stop(kv_e2e::PATIENCE).await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn a_malformed_tokens_file_stops_the_server_naming_the_file_and_line() {
    let binary = &binaries().await.front;
    let secret = "s3cret-token-never-shown";
    for (contents, line) in [
        (format!("admin {secret}\n"), 1),
        (format!("read ok-token\n{secret} write\n"), 2),
        ("# c\n\nwrite\n".to_owned(), 3),
        (format!("write {secret} extra\n"), 1),
        (format!("read ok-token\nwrite {secret}\nread   \n"), 3),
    ] {
        let file = TokensFile::new(&contents);
        let mut front = ServerProcess::start(
            "front-server",
            binary,
            &[
                ("API_TOKENS_FILE", &file.path),
                ("FRONT_LISTEN", "127.0.0.1:0"),
                ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ],
        );

        let status = front.exit_within(kv_e2e::PATIENCE).await;

        let log = front.log();
        assert_eq!(status.code(), Some(1), "{contents:?}:\n{log}");
        let expected = format!("API tokens file {}, line {line}:", file.path);
        assert!(
            log.contains(&expected),
            "{contents:?}: no {expected:?}:\n{log}"
        );
        assert!(
            !log.contains(secret),
            "{contents:?}: the token leaked:\n{log}"
        );
        assert!(!log.contains("listening"), "{log}");
    }
    // A file that does not exist stops it too.
    let mut front = ServerProcess::start(
        "front-server",
        binary,
        &[
            ("API_TOKENS_FILE", "/nonexistent/api-tokens"),
            ("FRONT_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(front.exit_within(kv_e2e::PATIENCE).await.code(), Some(1));
    assert!(
        front.log().contains("/nonexistent/api-tokens"),
        "{}",
        front.log()
    );
}

#[tokio::test]
async fn no_token_appears_in_the_debug_log_the_metrics_or_help() {
    let mut app = spawn_app_with(Options {
        front_server: false,
        ..Options::default()
    })
    .await;
    let (read, write, wrong) = (token("read"), token("write"), token("wrong"));
    let file = TokensFile::new(&format!("read {read}\nwrite {write}\n"));
    let env = [
        ("API_TOKENS_FILE", file.path.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let mut front = app.start_front_process(&env).await;

    // Every path a token takes: accepted, refused, wrong scope, reloaded.
    for (method, token, body) in [
        ("POST", &write, r#"{"k": 2}"#),
        ("GET", &read, ""),
        ("POST", &read, r#"{"k": 3}"#),
        ("GET", &wrong, ""),
        ("POST", &wrong, "not json"),
    ] {
        let authorization = format!("Bearer {token}");
        call(&app, method, Some(&authorization), "/api?key=k", body).await;
    }
    file.replace(&format!("write {write}\nbogus {read}\n"));
    front.signal("HUP");
    front.wait_for_log("kept the API tokens in force").await;
    let metrics = call(&app, "GET", None, "/metrics", "")
        .await
        .text()
        .await
        .unwrap();
    front.stop(kv_e2e::PATIENCE).await.unwrap();
    let help = std::process::Command::new(&binaries().await.front)
        .arg("--help")
        .env("API_TOKENS_FILE", &file.path)
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();

    let log = front.log();
    assert!(log.contains("DEBUG"), "not a debug log:\n{log}");
    assert!(help.contains("API_TOKENS_FILE"), "{help}");
    for token in [&read, &write, &wrong] {
        assert!(!log.contains(token.as_str()), "{token} in the log:\n{log}");
        assert!(!metrics.contains(token.as_str()), "{token} in /metrics");
        assert!(!help.contains(token.as_str()), "{token} in --help");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn an_open_server_warns_once_that_anyone_may_use_the_api() {
    let mut app = spawn_app_with(Options::no_servers()).await;
    let front = app.start_front_process(&[]).await;

    let response = call(&app, "POST", None, "/api", r#"{"open": 1}"#).await;

    assert_eq!(response.status(), 200);
    let log = front.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("is open to anyone"))
        .collect();
    let [warning] = warnings.as_slice() else {
        panic!("one warning, not {warnings:?}:\n{log}")
    };
    assert!(
        warning.contains("WARN") && warning.contains("API_TOKENS_FILE"),
        "{warning}"
    );
    drop(front);
    app.shutdown().await;
}
