//! `/docs` in a real browser: headless Chromium, driven over WebDriver by `chromedriver`, opens
//! Swagger UI on a running front-server, finds both operations of `/api`, stores a value with
//! "Try it out" on `POST` and reads it back with `GET`, all from the page; and the same on a
//! server with API tokens, after entering a `write` token with the page's "Authorize".
//!
//! It needs Debian's `chromium` and `chromium-driver` packages, which `scripts/test` installs when
//! run as root; without them this test fails and names the package to install.

use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use kv_e2e::app::{Options, PATIENCE, TestApp, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const INSTALL: &str = "install them with `sudo apt-get install -y chromium chromium-driver` (Debian), \
     or run scripts/test as root, which does";

/// A `chromedriver` process on a free port, killed when dropped (also when the test fails).
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    async fn start() -> Self {
        let binary = find_in_path("chromedriver").unwrap_or_else(|| {
            panic!("chromedriver (Debian package chromium-driver) is missing: {INSTALL}")
        });
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} (Debian package chromium) is missing: {INSTALL}"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            // Its own process group, which the browser it starts joins: see `drop`.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver does not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        driver
    }

    async fn open_browser(&self) -> Client {
        let options = json!({
            "binary": CHROMIUM,
            // No sandbox: it cannot start as root, as CI runs. No /dev/shm: small in containers.
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,2000"],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver starts a headless Chromium")
    }
}

impl Drop for Chromedriver {
    /// Kills chromedriver's whole process group: a browser whose session was never closed (the
    /// test failed half-way) outlives chromedriver otherwise.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The element `css` matches, once it is on the page.
async fn wait_for(browser: &Client, css: &str) -> Element {
    browser
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("{css} never appeared: {err}"))
}

/// The text of the element `css` matches, once `done` accepts it.
async fn wait_for_text(browser: &Client, css: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = wait_for(browser, css)
            .await
            .text()
            .await
            .unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} still shows {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces what a field holds (the page fills in the document's examples) by typing, as a user
/// would: select all, then type. WebDriver's `clear` would bypass the page's change handlers.
async fn type_over(field: &Element, text: &str) {
    let select_all = format!("{}a{}", char::from(Key::Control), char::from(Key::Null));
    field.send_keys(&select_all).await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Expands an operation, presses "Try it out", lets `fill` enter its input, presses "Execute",
/// and returns the response's status and body as the page shows them.
async fn try_it_out<F>(browser: &Client, operation: &str, fill: F) -> (String, Value)
where
    F: AsyncFnOnce(&Client),
{
    wait_for(browser, &format!("{operation} .opblock-summary"))
        .await
        .click()
        .await
        .unwrap();
    wait_for(browser, &format!("{operation} .try-out__btn"))
        .await
        .click()
        .await
        .unwrap();
    fill(browser).await;
    wait_for(browser, &format!("{operation} .execute"))
        .await
        .click()
        .await
        .unwrap();
    // The live response's row, not the table's header row (whose status cell says "Code").
    let table = format!("{operation} .live-responses-table tr.response");
    let status = wait_for_text(browser, &format!("{table} .response-col_status"), |text| {
        !text.trim().is_empty()
    })
    .await;
    let body = wait_for_text(
        browser,
        &format!("{table} .response-col_description .highlight-code pre"),
        |text| serde_json::from_str::<Value>(text).is_ok(),
    )
    .await;
    (
        status.trim().to_owned(),
        serde_json::from_str(&body).unwrap(),
    )
}

#[tokio::test]
async fn the_docs_page_stores_a_value_and_reads_it_back_in_a_real_browser() {
    let app = spawn_app().await;

    store_and_read_back_through_the_page(&app, None).await;

    app.shutdown().await;
}

#[tokio::test]
async fn the_docs_page_authorizes_with_a_write_token_then_stores_and_reads_in_a_real_browser() {
    let tokens = crate::auth::TokensFile::new("write browser-write-token\n");
    let app = spawn_app_with(Options {
        front_env: tokens.front_env(),
        ..Options::default()
    })
    .await;

    store_and_read_back_through_the_page(&app, Some("browser-write-token")).await;

    app.shutdown().await;
}

/// Opens `/docs`, enters `token` with "Authorize" if there is one, stores a value with "Try it
/// out" on `POST /api` and reads it back with `GET /api`, and checks both answers.
async fn store_and_read_back_through_the_page(app: &TestApp, token: Option<&str>) {
    let driver = Chromedriver::start().await;
    let browser = driver.open_browser().await;
    let key = format!("browser-{}", app.queue);
    let value = 42.125;

    browser
        .goto(&format!("{}/docs", app.address))
        .await
        .unwrap();
    // Swagger UI names each operation's block `operations-<tag>-<operationId>`.
    let (write, read) = ("#operations-kv-write", "#operations-kv-read");
    for operation in [write, read] {
        let summary = wait_for(&browser, &format!("{operation} .opblock-summary")).await;
        let text = summary.text().await.unwrap();
        assert!(text.contains("/api"), "{operation}: {text:?}");
    }
    if let Some(token) = token {
        authorize(&browser, token).await;
    }
    let (post_status, post_body) = try_it_out(&browser, write, async |browser: &Client| {
        let body = wait_for(browser, &format!("{write} textarea.body-param__text")).await;
        type_over(&body, &json!({ &key: value }).to_string()).await;
    })
    .await;
    let (get_status, get_body) = try_it_out(&browser, read, async |browser: &Client| {
        let input = wait_for(browser, &format!("{read} tr[data-param-name=key] input")).await;
        type_over(&input, &key).await;
    })
    .await;

    assert_eq!(post_status, "200", "{post_body}");
    assert_eq!(post_body["success"], true, "{post_body}");
    assert_eq!(get_status, "200", "{get_body}");
    assert_eq!(get_body, json!({"success": true, "data": value}));
    browser.close().await.unwrap();
}

/// Presses the page's "Authorize", enters `token` as the bearer token, applies it and closes the
/// dialog, as a user would.
async fn authorize(browser: &Client, token: &str) {
    wait_for(browser, ".auth-wrapper .btn.authorize")
        .await
        .click()
        .await
        .unwrap();
    let field = wait_for(browser, ".modal-ux #auth-bearer-value").await;
    field.send_keys(token).await.unwrap();
    wait_for(browser, ".modal-ux .auth-btn-wrapper button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    // Once applied, the dialog shows the scheme as authorized and offers "Logout".
    wait_for_text(browser, ".modal-ux .auth-container h6", |text| {
        text.contains("Authorized")
    })
    .await;
    wait_for(browser, ".modal-ux .btn-done")
        .await
        .click()
        .await
        .unwrap();
}
