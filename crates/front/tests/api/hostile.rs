//! Hostile input against the real `front-server` binary (issue 4, point 3): ten thousand
//! generated requests that must each get the contract's JSON answer, and slow, idle and
//! half-closed connections that must not exhaust the server.
//!
//! The binary runs as a child process, as in production, so that its memory can be read from
//! `/proc` and a crash shows as an exit. The back-server, the queue, the database and their
//! cleanup come from [`spawn_app`]; its in-process front-server is simply not used here.
//!
//! Requests are raw bytes over TCP, because the interesting ones (duplicate `Content-Length`,
//! broken chunks, lowercase methods) are those an HTTP client library refuses to send. Each
//! connection writes its bytes, closes its sending half and reads until the server closes, so a
//! request that leaves the server waiting ends at once instead of at a timeout. The generator is
//! seeded and prints its seed; `HOSTILE_SEED=<seed>` replays a run.

use crate::helpers::{PATIENCE, TestApp, amqp_url, spawn_app};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const NOT_JSON: &str = "Incorrect input data format, must be JSON";
const BAD_PAIR: &str = "Acceptable only one pair key:value in JSON format, value must be a number";
const BAD_QUERY: &str = "Acceptable one parameter named 'key'";
const BAD_TYPE: &str = "Invalid Content-Type, must be 'application/json'";
const BODY_LIMIT: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// The server under test

/// What the server's log says that a test waits for.
enum Event {
    Listening(SocketAddr),
    Ready,
    Exited,
}

/// The real `front-server` binary on a port of its own; killed when dropped, so that a failing
/// test leaves no process behind.
struct FrontProcess {
    child: Child,
    address: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl FrontProcess {
    /// Starts the binary on `queue` with extra environment `settings` and returns once it
    /// listens and has reached RabbitMQ.
    async fn start(queue: &str, settings: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_front-server"))
            .env_remove("CONFIG_FILE")
            .env("AMQP_URL", amqp_url())
            .env("KV_QUEUE", queue)
            .env("FRONT_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(settings.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start front-server");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, mut events) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        // Drain stderr for the process's whole life: a full pipe would block its logging.
        let recent = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, address)) = line.split_once("listening address=") {
                    if let Ok(address) = address.trim().parse() {
                        let _ = sender.send(Event::Listening(address));
                    }
                } else if line.contains("ready: publishing to RabbitMQ") {
                    let _ = sender.send(Event::Ready);
                }
                let mut recent = recent.lock().unwrap();
                if recent.len() == 100 {
                    recent.pop_front();
                }
                recent.push_back(line);
            }
            let _ = sender.send(Event::Exited);
        });
        let mut address = None;
        let started = tokio::time::timeout(PATIENCE, async {
            loop {
                match events.recv().await {
                    Some(Event::Listening(bound)) => address = Some(bound),
                    Some(Event::Ready) => return true,
                    Some(Event::Exited) | None => return false,
                }
            }
        })
        .await;
        let mut process = Self {
            child,
            address: "0.0.0.0:0".parse().unwrap(),
            events,
            log,
        };
        assert_eq!(
            (started, address.is_some()),
            (Ok(true), true),
            "front-server did not come up:\n{}",
            process.recent_log()
        );
        process.address = address.unwrap();
        process
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("query the child").is_none()
    }

    /// Resident memory, from the kernel's own accounting.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the process has a /proc entry");
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .expect("VmRSS is reported");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn recent_log(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Sends SIGTERM, as `docker stop` does, and waits for the process to exit.
    async fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        // Its stderr closes when it exits: await that rather than poll.
        let exited = tokio::time::timeout(PATIENCE, async {
            while let Some(event) = self.events.recv().await {
                if let Event::Exited = event {
                    break;
                }
            }
        })
        .await;
        assert!(exited.is_ok(), "front-server did not stop on SIGTERM");
        self.child.wait().expect("reap front-server")
    }
}

impl Drop for FrontProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The back-server, queue and database of [`spawn_app`], and the real binary in front of them.
async fn start_system(settings: &[(&str, &str)]) -> (TestApp, FrontProcess) {
    let app = spawn_app().await;
    let front = FrontProcess::start(&app.queue, settings).await;
    (app, front)
}

// ---------------------------------------------------------------------------------------------
// One connection: write, half-close, read every answer until the server closes

#[derive(Debug)]
struct Answer {
    status: u16,
    /// The parsed body when the answer says it is JSON; `None` for an empty body.
    json: Option<serde_json::Value>,
}

/// Sends `request` on a new connection and returns the answers it got, in order; `head` is the
/// index of the request that is a HEAD, if any. `Err` when the server neither answered nor
/// closed within [`PATIENCE`], or answered something that is not HTTP with a JSON or empty body.
async fn exchange(
    address: SocketAddr,
    request: &[u8],
    head: Option<usize>,
) -> Result<Vec<Answer>, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|err| format!("cannot connect: {err}"))?;
    // The server may close before taking it all (after a 413, say); its answer is still there.
    let _ = stream.write_all(request).await;
    let _ = stream.shutdown().await;
    let mut received = Vec::new();
    // A reset after some bytes still leaves them in `received`; they are judged like the rest.
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received)).await;
    if read.is_err() {
        return Err(format!("hang: neither answered nor closed in {PATIENCE:?}"));
    }
    parse_answers(&received, head)
}

fn parse_answers(mut bytes: &[u8], head: Option<usize>) -> Result<Vec<Answer>, String> {
    let mut answers = Vec::new();
    while !bytes.is_empty() {
        let end = find(bytes, b"\r\n\r\n").ok_or_else(|| format!("truncated: {}", show(bytes)))?;
        let text = std::str::from_utf8(&bytes[..end]).map_err(|_| "a head that is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3)?.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {}", show(bytes)))?;
        let (mut length, mut is_json) = (0, false);
        for line in lines {
            let (name, value) = line.split_once(':').ok_or("a header line without ':'")?;
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().map_err(|_| "bad length")?,
                "content-type" => is_json = value.trim() == "application/json",
                "transfer-encoding" => return Err("a chunked answer".into()),
                _ => {}
            }
        }
        // Answers to HEAD and 1xx have no body whatever their Content-Length says.
        let length = if head == Some(answers.len()) || status < 200 {
            0
        } else {
            length
        };
        let rest = &bytes[end + 4..];
        let body = rest.get(..length).ok_or("a truncated body")?;
        bytes = &rest[length..];
        if status < 200 {
            continue; // 100 Continue, before the real answer
        }
        let json = match (is_json, body.is_empty()) {
            (_, true) => None,
            (true, false) => Some(
                serde_json::from_slice(body)
                    .map_err(|_| format!("says JSON, is not: {}", show(body)))?,
            ),
            (false, false) => return Err(format!("a body that is not JSON: {}", show(body))),
        };
        answers.push(Answer { status, json });
    }
    Ok(answers)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Bytes for a failure message: escaped, and cut short.
fn show(bytes: &[u8]) -> String {
    let shown: String = bytes.escape_ascii().to_string().chars().take(300).collect();
    if bytes.len() > 300 {
        format!("{shown}… ({} bytes)", bytes.len())
    } else {
        shown
    }
}

// ---------------------------------------------------------------------------------------------
// Generated requests

/// SplitMix64: a tiny seeded generator, so that a seed replays a run exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// What a request must get. Every failure is also checked to be `{"success": false, ...}`.
#[derive(Debug, Clone)]
enum Expect {
    /// A valid write: `200`, or the documented `503` (then it may or may not be stored).
    Write { key: String, value: f64 },
    /// A valid read of one of this worker's keys: `200` with the value last written, or `404`
    /// if none was; or the documented `503`/`504`.
    ReadOwn { key: String },
    /// A valid read of a key nobody writes: `404` (or `503`/`504`).
    ReadAbsent,
    /// A read whose odd query may or may not name one key: `200`, `404` or `400`.
    ReadOrBad,
    /// This status; with the contract's message when one is given.
    Status(u16, Option<&'static str>),
    /// `413`, or a reset when the server stops reading the body it refused.
    TooLarge,
    /// A HEAD request: one of these statuses, and no body.
    Head(&'static [u16]),
    /// Broken HTTP: any 4xx, hyper's own bodiless `400`/`414`/`431`, or just a close. Its bytes
    /// carry this write, which a `200` means was taken (some oddities are legal HTTP).
    Garbage { write: Option<(String, f64)> },
}

struct Part {
    label: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
    /// The server may close the connection after answering it (an unread body, say), so the
    /// requests after it may go unanswered.
    ends: bool,
}

impl Part {
    fn new(label: &'static str, bytes: Vec<u8>, expect: Expect) -> Self {
        Self {
            label,
            bytes,
            expect,
            ends: false,
        }
    }

    fn ending(mut self) -> Self {
        self.ends = true;
        self
    }
}

/// One connection's worth: a few requests, pipelined. Only the last may break HTTP's framing,
/// so that every answer can be matched to the request it answers.
struct Case {
    parts: Vec<Part>,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        self.parts.iter().flat_map(|p| p.bytes.clone()).collect()
    }

    fn head(&self) -> Option<usize> {
        self.parts
            .iter()
            .position(|p| matches!(p.expect, Expect::Head(_)))
    }

    fn describe(&self) -> String {
        let labels: Vec<_> = self.parts.iter().map(|p| p.label).collect();
        format!("[{}] {}", labels.join(" + "), show(&self.bytes()))
    }
}

/// A request head under construction; raw bytes, so that it can hold what a client should not.
struct Req(Vec<u8>);

impl Req {
    fn new(method: &str, target: &str) -> Self {
        Self(format!("{method} {target} HTTP/1.1\r\nHost: fuzz\r\n").into_bytes())
    }

    fn line(line: &[u8]) -> Self {
        Self([line, b"\r\n"].concat())
    }

    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value.as_ref());
        self.0.extend_from_slice(b"\r\n");
        self
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }

    fn sized(self, body: &[u8]) -> Vec<u8> {
        let mut bytes = self
            .header("Content-Length", body.len().to_string())
            .finish();
        bytes.extend_from_slice(body);
        bytes
    }

    fn chunked(self, rng: &mut Rng, body: &[u8]) -> Vec<u8> {
        let mut bytes = self.header("Transfer-Encoding", "chunked").finish();
        bytes.extend(chunks(rng, body));
        bytes
    }
}

/// `body` in chunks of random sizes, in either case of hex, then the last chunk.
fn chunks(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let size = 1 + rng.below(rest.len().min(40_000));
        let (chunk, tail) = rest.split_at(size);
        let size = if rng.chance(50) {
            format!("{size:x}")
        } else {
            format!("{size:X}")
        };
        bytes.extend_from_slice(format!("{size}\r\n").as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
        rest = tail;
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

/// Pieces of keys: control characters, escapes, combining marks, bidi overrides, emoji with
/// joiners, the last code point, and what a query string or JSON treats specially.
const ODD: &[&str] = &[
    "a",
    "Z",
    "0",
    " ",
    "é",
    "e\u{301}",
    "ключ",
    "中文",
    "😀",
    "🏳️‍🌈",
    "\u{200B}",
    "\u{202E}",
    "\u{FEFF}",
    "\u{0}",
    "\t",
    "\n",
    "\u{7F}",
    "\"",
    "\\",
    "/",
    "&",
    "=",
    "%",
    "+",
    "?",
    "#",
    ";",
    "\u{10FFFF}",
    "\u{FFFD}",
    "ß",
    "İ",
    "ﬁ",
    "'",
    "<",
    "{",
    "}",
];

/// A key of `prefix` and odd pieces, exactly `len` bytes long, whose last character is
/// multi-byte and ends exactly at `len`: the byte limit is checked on a character boundary.
fn boundary_key(rng: &mut Rng, prefix: &str, len: usize) -> String {
    let last = *rng.pick(&["é", "中", "😀"]);
    let mut key = prefix.to_owned();
    loop {
        let piece = *rng.pick(ODD);
        if key.len() + piece.len() + last.len() > len {
            break;
        }
        key.push_str(piece);
    }
    while key.len() + last.len() < len {
        key.push('x');
    }
    key.push_str(last);
    key
}

/// The keys one worker writes; their prefix keeps them apart from other workers' keys, so that
/// each worker knows the last value written to each of its keys.
fn key_pool(rng: &mut Rng, worker: usize) -> Vec<String> {
    let prefix = format!("w{worker}:");
    (0..24)
        .map(|_| {
            if rng.chance(25) {
                boundary_key(rng, &prefix, kv_protocol::MAX_KEY_BYTES)
            } else {
                let mut key = prefix.clone();
                for _ in 0..1 + rng.below(12) {
                    let piece = *rng.pick(ODD);
                    key += piece;
                }
                key
            }
        })
        .collect()
}

/// A JSON number literal and the value it denotes.
fn number(rng: &mut Rng) -> (String, f64) {
    let literal = match rng.below(6) {
        0 => ((rng.next() as i64) % 1_000_000).to_string(),
        1 => format!("{}.{:03}", rng.below(1000), rng.below(1000)),
        2 => format!("-{}e{}", 1 + rng.below(99), rng.below(600) as i64 - 300),
        3 => {
            let value = f64::from_bits(rng.next());
            if value.is_finite() {
                serde_json::to_string(&value).unwrap()
            } else {
                "0.5".into()
            }
        }
        4 => rng
            .pick(&["0", "-0", "0.0", "1E2", "1e-2", "-0.0e0"])
            .to_string(),
        _ => rng.next().to_string(),
    };
    let value = literal.parse().expect("a valid literal");
    (literal, value)
}

/// `key` as a JSON string, some characters escaped as `\uXXXX` (surrogate pairs beyond the BMP).
fn json_string(rng: &mut Rng, key: &str) -> String {
    let mut out = String::from('"');
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || rng.chance(10) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn pair_body(rng: &mut Rng, key: &str, literal: &str) -> Vec<u8> {
    let mut ws = || *rng.pick(&["", "", " ", "\n", "\t", "\r\n  "]);
    let (a, b, c, d, e) = (ws(), ws(), ws(), ws(), ws());
    let key = json_string(rng, key);
    format!("{a}{{{b}{key}{c}:{d}{literal}{e}}}").into_bytes()
}

/// A valid pair for one of the worker's keys: the body and the write it asks for.
fn valid_pair(rng: &mut Rng, pool: &[String]) -> (Vec<u8>, String, f64) {
    let key = rng.pick(pool).clone();
    let (literal, value) = number(rng);
    (pair_body(rng, &key, &literal), key, value)
}

/// `key` percent-encoded for a query, in one of several legal spellings.
fn query_value(rng: &mut Rng, key: &str) -> String {
    match rng.below(3) {
        0 => form_urlencoded::byte_serialize(key.as_bytes()).collect(),
        1 => key
            .bytes()
            .map(|b| {
                if rng.chance(50) {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect(),
        _ => key
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect(),
    }
}

fn post_json(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let content_type = *rng.pick(&[
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "Application/Json;charset=\"utf-8\"",
        "application/json ;q=1",
    ]);
    let mut request = Req::new("POST", "/api").header("Content-Type", content_type);
    if rng.chance(10) {
        request = request.header("Expect", "100-continue");
    }
    if rng.chance(20) {
        request.chunked(rng, body)
    } else {
        request.sized(body)
    }
}

fn valid_write(rng: &mut Rng, pool: &[String]) -> Part {
    let (body, key, value) = valid_pair(rng, pool);
    Part::new(
        "valid write",
        post_json(rng, &body),
        Expect::Write { key, value },
    )
}

fn valid_read(rng: &mut Rng, pool: &[String]) -> Part {
    if rng.chance(85) {
        let key = rng.pick(pool).clone();
        let target = format!("/api?key={}", query_value(rng, &key));
        let bytes = Req::new("GET", &target).finish();
        Part::new("valid read", bytes, Expect::ReadOwn { key })
    } else {
        let key = format!("absent:{}", rng.pick(ODD));
        let target = format!("/api?key={}", query_value(rng, &key));
        let bytes = Req::new("GET", &target).finish();
        Part::new("absent read", bytes, Expect::ReadAbsent)
    }
}

fn long_key(rng: &mut Rng) -> Part {
    let key = boundary_key(rng, "long:", kv_protocol::MAX_KEY_BYTES + 1);
    if rng.chance(50) {
        let body = pair_body(rng, &key, "1");
        let expect = Expect::Status(400, Some(BAD_PAIR));
        Part::new("257-byte key write", post_json(rng, &body), expect)
    } else {
        let target = format!("/api?key={}", query_value(rng, &key));
        let expect = Expect::Status(400, Some(BAD_QUERY));
        Part::new(
            "257-byte key read",
            Req::new("GET", &target).finish(),
            expect,
        )
    }
}

fn bad_shape(rng: &mut Rng, pool: &[String]) -> Part {
    let key = rng.pick(pool).clone();
    let key = json_string(rng, &key);
    let body = match rng.below(18) {
        0 => "{}".into(),
        1 => "[]".into(),
        2 => "[1]".into(),
        3 => "1".into(),
        4 => "\"k\"".into(),
        5 => "null".into(),
        6 => "true".into(),
        7 => format!("{{{key}: true}}"),
        8 => format!("{{{key}: \"25\"}}"),
        9 => format!("{{{key}: null}}"),
        10 => format!("{{{key}: [1]}}"),
        11 => format!("{{{key}: {{}}}}"),
        12 => format!("{{{key}: 1, \"other\": 2}}"),
        13 => format!("{{{key}: 1, {key}: 1}}"),
        14 => "{\"\": 1}".into(),
        15 => format!("{{{key}: 1e400}}"),
        16 => format!("{{{key}: -1e999}}"),
        _ => format!("[{{{key}: 1}}]"),
    };
    let expect = Expect::Status(400, Some(BAD_PAIR));
    Part::new("wrong shape", post_json(rng, body.as_bytes()), expect)
}

fn not_json(rng: &mut Rng, pool: &[String]) -> Part {
    let key = rng.pick(pool).clone();
    let key = json_string(rng, &key);
    let body: Vec<u8> = match rng.below(16) {
        0 => {
            // Random bytes are almost never JSON; when they are, they are the wrong shape.
            let len = 1 + rng.below(300);
            let body = rng.bytes(len);
            let bytes = post_json(rng, &body);
            return Part::new("random body", bytes, Expect::Status(400, None));
        }
        1 => Vec::new(),
        2 => b"{".to_vec(),
        3 => format!("{{{key}: 1").into(),
        4 => format!("{{{key}: NaN}}").into(),
        5 => format!("{{{key}: Infinity}}").into(),
        6 => format!("{{{key}: 1}}}}").into(),
        7 => format!("\u{feff}{{{key}: 1}}").into(),
        8 => format!("{{{key}: 01}}").into(),
        9 => format!("{{{key}: 1.}}").into(),
        10 => format!("{{{key}: .5}}").into(),
        11 => format!("{{{key}: +1}}").into(),
        12 => format!("{{{key}: 0x10}}").into(),
        13 => format!("{{{key}: 1,}}").into(),
        14 => b"{\"\xff\xfe\": 1}".to_vec(),
        _ => b"{'k': 1}".to_vec(),
    };
    let expect = Expect::Status(400, Some(NOT_JSON));
    Part::new("not JSON", post_json(rng, &body), expect)
}

fn deep_json(rng: &mut Rng) -> Part {
    let depth = *rng.pick(&[64, 127, 128, 129, 1000, 20_000]);
    let body = match rng.below(4) {
        0 => format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("{{\"k\": {}1{}}}", "[".repeat(depth), "]".repeat(depth)),
        2 => "[".repeat(depth),
        _ => {
            let depth = depth.min(10_000); // five bytes a level: keep within the body limit
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
        }
    };
    assert!(body.len() <= BODY_LIMIT);
    // Past serde_json's recursion limit it is "not JSON", before it the wrong shape: both 400.
    Part::new(
        "deep JSON",
        post_json(rng, body.as_bytes()),
        Expect::Status(400, None),
    )
}

fn huge_json(rng: &mut Rng) -> Part {
    let body = match rng.below(4) {
        0 => {
            let members: Vec<_> = (0..5000).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}}}", members.join(","))
        }
        1 => format!("{{\"k\": {}}}", "9".repeat(60_000)),
        2 => format!("{{\"{}\": 1}}", "k".repeat(60_000)),
        _ => format!("[{}1]", "1,".repeat(30_000)),
    };
    assert!(body.len() <= BODY_LIMIT);
    let expect = Expect::Status(400, Some(BAD_PAIR));
    Part::new("huge JSON", post_json(rng, body.as_bytes()), expect)
}

fn wrong_content_type(rng: &mut Rng, pool: &[String]) -> Part {
    // A valid pair: stored by mistake, it would change a value the ledger knows.
    let (body, _, _) = valid_pair(rng, pool);
    let request = Req::new("POST", "/api");
    let request = match rng.below(12) {
        0 => request,
        1 => request.header("Content-Type", "text/plain"),
        2 => request.header("Content-Type", "application/jsonx"),
        3 => request.header("Content-Type", "application/x-www-form-urlencoded"),
        4 => request.header("Content-Type", "json"),
        5 => request.header("Content-Type", "application/json, text/plain"),
        6 => request.header("Content-Type", ""),
        7 => request.header("Content-Type", "application/ json"),
        8 => request.header("Content-Type", b"application/json\xff"),
        9 => request
            .header("Content-Type", "application/json")
            .header("Content-Type", "application/json"),
        10 => request
            .header("Content-Type", "application/json")
            .header("Content-Type", "text/plain"),
        _ => request.header("Content-Typ", "application/json"),
    };
    let expect = Expect::Status(415, Some(BAD_TYPE));
    Part::new("wrong Content-Type", request.sized(&body), expect).ending()
}

fn odd_method(rng: &mut Rng, pool: &[String]) -> Part {
    let method = *rng.pick(&[
        "PUT",
        "DELETE",
        "PATCH",
        "OPTIONS",
        "TRACE",
        "get",
        "post",
        "Post",
        "FOO",
        "M-SEARCH",
        "PROPFIND",
        "QUERY",
        "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    ]);
    let (body, _, _) = valid_pair(rng, pool);
    let bytes = Req::new(method, "/api?key=a")
        .header("Content-Type", "application/json")
        .sized(&body);
    Part::new("odd method", bytes, Expect::Status(405, None)).ending()
}

fn unknown_path(rng: &mut Rng) -> Part {
    let long = format!("/{}", "a".repeat(3000));
    let path = rng
        .pick(&[
            "/",
            "/API",
            "/api/",
            "//api",
            "/api/x",
            "/api%2F",
            "/%61pi",
            "/%00",
            "/../api",
            "/api;x",
            "/api.json",
            "/ap",
            "/%C3%A9",
            long.as_str(),
        ])
        .to_string();
    let bytes = if rng.chance(50) {
        Req::new("GET", &format!("{path}?key=a")).finish()
    } else {
        Req::new("POST", &path)
            .header("Content-Type", "application/json")
            .sized(b"{\"k\": 1}")
    };
    Part::new("unknown path", bytes, Expect::Status(404, None)).ending()
}

fn odd_query(rng: &mut Rng) -> Part {
    let too_long = format!("?key={}", "k".repeat(kv_protocol::MAX_KEY_BYTES + 1));
    let bad = [
        "",
        "?",
        "?key",
        "?key=",
        "?key=a&key=b",
        "?key=a&key=a",
        "?KEY=a",
        "?Key=a",
        "?key=a&x=1",
        "?x=1",
        "?key%3Da",
        "?=a",
        "?&&",
        &too_long,
    ];
    let odd = [
        "?k%65y=a",
        "?key=a;key=b",
        "?&key=a",
        "?key=a&",
        "?key=%zz",
        "?key=%FF%FE",
        "?key=+",
        "?key=%00",
        "?key==",
        "?key=a%26key%3Db",
        "?key=%",
        "?key=%e",
    ];
    if rng.chance(50) {
        let target = format!("/api{}", rng.pick(&bad));
        let expect = Expect::Status(400, Some(BAD_QUERY));
        Part::new("bad query", Req::new("GET", &target).finish(), expect)
    } else {
        let target = format!("/api{}", rng.pick(&odd));
        Part::new(
            "odd query",
            Req::new("GET", &target).finish(),
            Expect::ReadOrBad,
        )
    }
}

/// Requests that keep HTTP's framing, so more can follow them on the connection.
fn framed_part(rng: &mut Rng, pool: &[String]) -> Part {
    match rng.below(100) {
        0..=24 => valid_write(rng, pool),
        25..=39 => valid_read(rng, pool),
        40..=44 => long_key(rng),
        45..=53 => bad_shape(rng, pool),
        54..=63 => not_json(rng, pool),
        64..=68 => deep_json(rng),
        69..=71 => huge_json(rng),
        72..=78 => wrong_content_type(rng, pool),
        79..=85 => odd_method(rng, pool),
        86..=91 => unknown_path(rng),
        _ => odd_query(rng),
    }
}

fn oversized(rng: &mut Rng) -> Part {
    let len = BODY_LIMIT + 1 + rng.below(4 * BODY_LIMIT);
    let mut body = b"{\"k\": 1".to_vec();
    body.resize(len, b' ');
    let request = Req::new("POST", "/api").header("Content-Type", "application/json");
    let bytes = if rng.chance(30) {
        request.chunked(rng, &body)
    } else {
        request.sized(&body)
    };
    Part::new("oversized body", bytes, Expect::TooLarge)
}

fn head_request(rng: &mut Rng, pool: &[String]) -> Part {
    let (target, allowed): (String, &'static [u16]) = match rng.below(3) {
        0 => {
            let key = rng.pick(pool).clone();
            let key = query_value(rng, &key);
            (format!("/api?key={key}"), &[200, 404, 503, 504])
        }
        1 => ("/api".into(), &[400]),
        _ => ("/nowhere".into(), &[404]),
    };
    Part::new(
        "HEAD",
        Req::new("HEAD", &target).finish(),
        Expect::Head(allowed),
    )
}

/// A valid write on a connection the client asks to close after it.
fn closing_write(rng: &mut Rng, pool: &[String]) -> Part {
    let (body, key, value) = valid_pair(rng, pool);
    let request = if rng.chance(50) {
        Req::new("POST", "/api").header("Connection", "close")
    } else {
        Req::line(b"POST /api HTTP/1.0")
    };
    let bytes = request
        .header("Content-Type", "application/json")
        .sized(&body);
    Part::new("closing write", bytes, Expect::Write { key, value })
}

fn raw_bytes(rng: &mut Rng) -> Part {
    let len = 1 + rng.below(4096);
    let bytes = match rng.below(3) {
        0 => rng.bytes(len),
        1 => (0..len)
            .map(|_| *rng.pick(b"GET POST /api?key=\r\n:HTTP/1.1 {}\"\t\x00\x7f"))
            .collect(),
        _ => [b"POST /api HTTP/1.1\r\n".as_slice(), &rng.bytes(len)].concat(),
    };
    Part::new("random bytes", bytes, Expect::Garbage { write: None })
}

fn header_trouble(rng: &mut Rng, pool: &[String]) -> Part {
    let (body, key, value) = valid_pair(rng, pool);
    let len = body.len().to_string();
    let json = |req: Req| req.header("Content-Type", "application/json");
    let post = || json(Req::new("POST", "/api"));
    let with = |req: Req| [req.finish(), body.clone()].concat();
    let bytes = match rng.below(20) {
        0 => with(
            post()
                .header("Content-Length", &len)
                .header("Content-Length", &len),
        ),
        1 => with(
            post()
                .header("Content-Length", &len)
                .header("Content-Length", "1"),
        ),
        2 => with(post().header("Content-Length", format!("+{len}"))),
        3 => with(post().header("Content-Length", format!("0{len}"))),
        4 => with(post().header("Content-Length", format!("{len}, {len}"))),
        5 => with(post().header("Content-Length", "-1")),
        6 => with(post().header("Content-Length", "18446744073709551616")),
        7 => {
            let req = post().header("Content-Length", &len);
            req.chunked(rng, &body)
        }
        8 => {
            let req = post().header("Transfer-Encoding", "gzip");
            req.chunked(rng, &body)
        }
        9 => with(post().header("Transfer-Encoding", "identity")),
        10 => with(post().header("Content-Length ", &len)),
        11 => with(
            post()
                .header("Content-Length", &len)
                .header("X-Folded", "a\r\n b"),
        ),
        12 => {
            let mut req = post();
            for i in 0..120 {
                req = req.header(&format!("X-Many-{i}"), "1");
            }
            with(req.header("Content-Length", &len))
        }
        13 => with(
            post()
                .header("X-Huge", "h".repeat(70_000))
                .header("Content-Length", &len),
        ),
        14 => with(
            post()
                .header("X-Nul", b"a\x00b")
                .header("Content-Length", &len),
        ),
        15 => {
            let head = format!(
                "POST /api HTTP/1.1\nHost: fuzz\nContent-Type: application/json\nContent-Length: {len}\n\n"
            );
            [head.as_bytes(), &body].concat()
        }
        16 => with(
            post()
                .header("X-Odd", b"\xff\xfe\x80")
                .header("Content-Length", &len),
        ),
        17 => {
            let req = json(Req::line(b"POST /api HTTP/1.1")).header("Content-Length", &len);
            with(req)
        }
        18 => with(
            post()
                .header("Host", "other")
                .header("Content-Length", &len),
        ),
        _ => with(
            post()
                .header("Expect", "fancy")
                .header("Content-Length", &len),
        ),
    };
    let write = Some((key, value));
    Part::new("header trouble", bytes, Expect::Garbage { write })
}

fn truncated(rng: &mut Rng, pool: &[String]) -> Part {
    let (body, _, _) = valid_pair(rng, pool);
    let mut bytes = post_json(rng, &body);
    bytes.truncate(1 + rng.below(bytes.len() - 1));
    Part::new("truncated", bytes, Expect::Garbage { write: None })
}

fn chunk_trouble(rng: &mut Rng, pool: &[String]) -> Part {
    let (body, key, value) = valid_pair(rng, pool);
    let head = Req::new("POST", "/api")
        .header("Content-Type", "application/json")
        .header("Transfer-Encoding", "chunked")
        .finish();
    let n = format!("{:x}", body.len());
    let text = String::from_utf8_lossy(&body);
    let chunks = match rng.below(9) {
        0 => format!("zz\r\n{text}\r\n0\r\n\r\n"),
        1 => format!("{:x}\r\n{text}\r\n0\r\n\r\n", body.len() + 10),
        2 => format!("-{n}\r\n{text}\r\n0\r\n\r\n"),
        3 => format!("{n};ext=1;x\r\n{text}\r\n0\r\n\r\n"),
        4 => format!("{n}\r\n{text}0\r\n\r\n"),
        5 => format!("{n}\r\n{text}\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        6 => format!("000{n}\r\n{text}\r\n0\r\n\r\n"),
        7 => format!("ffffffffffffffffff\r\n{text}\r\n0\r\n\r\n"),
        _ => format!("{n}\n{text}\n0\n\n"),
    };
    let write = Some((key, value));
    let bytes = [head, chunks.into_bytes()].concat();
    Part::new("chunk trouble", bytes, Expect::Garbage { write })
}

fn protocol_oddity(rng: &mut Rng) -> Part {
    let long = format!("GET /api?key={} HTTP/1.1", "k".repeat(70_000));
    let lines: [&[u8]; 14] = [
        b"PRI * HTTP/2.0\r\n\r\nSM",
        b"GET /api?key=a HTTP/1.2",
        b"GET /api?key=a HTTP/2",
        b"GET /api?key=a HTTP/9.9",
        b"GET /api?key=a",
        b"GET http://example.com/api?key=a HTTP/1.1",
        b"CONNECT 127.0.0.1:1 HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"GET  /api?key=a  HTTP/1.1",
        b"GET\t/api?key=a\tHTTP/1.1",
        b"GET /api?key=a b HTTP/1.1",
        "GET /api?key=ключ HTTP/1.1".as_bytes(),
        b"GET /api?key=a#frag HTTP/1.1",
        long.as_bytes(),
    ];
    let line = *rng.pick(&lines);
    let mut request = Req::line(line).header("Host", "fuzz");
    if rng.chance(30) {
        request = request
            .header("Upgrade", "h2c")
            .header("Connection", "Upgrade");
    }
    let expect = Expect::Garbage { write: None };
    Part::new("protocol oddity", request.finish(), expect)
}

/// Requests after which nothing can follow on the connection.
fn last_part(rng: &mut Rng, pool: &[String]) -> Part {
    match rng.below(100) {
        0..=49 => framed_part(rng, pool),
        50..=55 => oversized(rng),
        56..=60 => head_request(rng, pool),
        61..=66 => closing_write(rng, pool),
        67..=76 => raw_bytes(rng),
        77..=86 => header_trouble(rng, pool),
        87..=91 => truncated(rng, pool),
        92..=95 => chunk_trouble(rng, pool),
        _ => protocol_oddity(rng),
    }
}

fn generate(rng: &mut Rng, pool: &[String]) -> Case {
    let count = *rng.pick(&[1, 1, 1, 1, 2, 2, 3]);
    let mut parts: Vec<_> = (1..count).map(|_| framed_part(rng, pool)).collect();
    parts.push(last_part(rng, pool));
    Case { parts }
}

// ---------------------------------------------------------------------------------------------
// Judging the answers

/// What each of a worker's keys may hold: the value of its last acknowledged write, or, after a
/// write whose fate is unknown (a `503`, a dropped connection), any of the candidates.
#[derive(Default)]
struct Ledger(HashMap<String, Vec<Option<f64>>>);

impl Ledger {
    fn candidates(&mut self, key: &str) -> &mut Vec<Option<f64>> {
        self.0.entry(key.to_owned()).or_insert_with(|| vec![None])
    }

    fn acknowledged(&mut self, key: &str, value: f64) {
        *self.candidates(key) = vec![Some(value)];
    }

    fn maybe(&mut self, key: &str, value: f64) {
        self.candidates(key).push(Some(value));
    }
}

#[derive(Default)]
struct Tally {
    requests: usize,
    statuses: BTreeMap<String, usize>,
}

fn is_failure(answer: &Answer) -> bool {
    answer.json.as_ref().is_some_and(|json| {
        json["success"] == serde_json::json!(false) && json["message"].is_string()
    })
}

fn message(answer: &Answer) -> Option<&str> {
    answer.json.as_ref()?["message"].as_str()
}

fn judge(expect: &Expect, answer: &Answer, ledger: &mut Ledger) -> Result<(), String> {
    let status = answer.status;
    if let Expect::Head(allowed) = expect {
        return match allowed.contains(&status) && answer.json.is_none() {
            true => Ok(()),
            false => Err(format!("HEAD got {answer:?}")),
        };
    }
    if answer.json.is_none() {
        // hyper answers what it cannot parse itself, with an empty body; nothing else may.
        let broken_http = matches!(expect, Expect::Garbage { .. });
        return match broken_http && matches!(status, 400 | 414 | 431) {
            true => Ok(()),
            false => Err(format!("{status} without a JSON body")),
        };
    }
    let succeeded = answer.json.as_ref().unwrap()["success"] == serde_json::json!(true);
    let data = answer.json.as_ref().unwrap()["data"].as_f64();
    let broker_trouble = matches!(status, 503 | 504) && is_failure(answer);
    let ok = match expect {
        Expect::Write { key, value } => match status {
            200 if succeeded => {
                ledger.acknowledged(key, *value);
                true
            }
            503 if is_failure(answer) => {
                ledger.maybe(key, *value);
                true
            }
            _ => false,
        },
        Expect::ReadOwn { key } => match status {
            200 if succeeded => {
                let Some(value) = data else {
                    return Err("a 200 read without a number".into());
                };
                let candidates = ledger.candidates(key);
                if !candidates.contains(&Some(value)) {
                    return Err(format!("read {value}, expected one of {candidates:?}"));
                }
                true
            }
            404 if is_failure(answer) => ledger.candidates(key).contains(&None),
            _ => broker_trouble,
        },
        Expect::ReadAbsent => (status == 404 && is_failure(answer)) || broker_trouble,
        Expect::ReadOrBad => {
            (status == 200 && succeeded && data.is_some())
                || (matches!(status, 400 | 404) && is_failure(answer))
                || broker_trouble
        }
        Expect::Status(expected, text) => {
            status == *expected
                && is_failure(answer)
                && text.is_none_or(|text| message(answer) == Some(text))
        }
        Expect::TooLarge => {
            status == 413
                && is_failure(answer)
                && message(answer).is_some_and(|m| m.contains(&BODY_LIMIT.to_string()))
        }
        Expect::Garbage { write } => match (status, write) {
            (200, Some((key, value))) if succeeded => {
                ledger.acknowledged(key, *value);
                true
            }
            (503, Some((key, value))) if is_failure(answer) => {
                ledger.maybe(key, *value);
                true
            }
            (400..=499, _) => is_failure(answer),
            _ => false,
        },
        Expect::Head(_) => unreachable!("handled above"),
    };
    match ok {
        true => Ok(()),
        false => Err(format!(
            "expected {expect:?}, got {status} {}",
            answer.json.as_ref().unwrap()
        )),
    }
}

/// Judges every answer of a case against its requests, in order, updating the ledger.
fn judge_case(case: &Case, answers: &[Answer], ledger: &mut Ledger) -> Result<(), String> {
    // After a request that may end the connection, the ones behind it may go unanswered.
    let mut excused = false;
    let mut first_error = None;
    for (index, part) in case.parts.iter().enumerate() {
        let may_vanish = matches!(part.expect, Expect::Garbage { .. } | Expect::TooLarge);
        let verdict = match answers.get(index) {
            Some(answer) => judge(&part.expect, answer, ledger),
            None if excused || may_vanish => Ok(()),
            None => Err("no answer".into()),
        };
        if verdict.is_err() || answers.get(index).is_none() {
            // Not answered, or wrongly: the write it carries may or may not have happened.
            let write = match &part.expect {
                Expect::Write { key, value } => Some((key, *value)),
                Expect::Garbage { write } => write.as_ref().map(|(k, v)| (k, *v)),
                _ => None,
            };
            if let Some((key, value)) = write {
                ledger.maybe(key, value);
            }
        }
        if let Err(err) = verdict {
            first_error.get_or_insert(format!("request {} ({}): {err}", index + 1, part.label));
        }
        excused |= part.ends || may_vanish;
    }
    if let Some(err) = first_error {
        return Err(err);
    }
    // Broken framing can make the server see more requests than were meant; all must fail.
    let broken = matches!(case.parts.last().unwrap().expect, Expect::Garbage { .. });
    for answer in answers.iter().skip(case.parts.len()) {
        if !broken {
            return Err(format!("an answer too many: {answer:?}"));
        }
        judge(&Expect::Garbage { write: None }, answer, ledger)?;
    }
    Ok(())
}

/// What one worker found.
#[derive(Default)]
struct Report {
    ledger: Ledger,
    tally: Tally,
    failures: Vec<String>,
}

/// Sends `cases` generated cases, one connection at a time, and judges each.
async fn run_worker(
    address: SocketAddr,
    rng: &mut Rng,
    pool: &[String],
    cases: usize,
    report: &mut Report,
) {
    for _ in 0..cases {
        let case = generate(rng, pool);
        report.tally.requests += case.parts.len();
        let answers = exchange(address, &case.bytes(), case.head()).await;
        let verdict = answers.and_then(|answers| {
            for answer in &answers {
                *report
                    .tally
                    .statuses
                    .entry(answer.status.to_string())
                    .or_default() += 1;
            }
            if answers.len() < case.parts.len() {
                *report
                    .tally
                    .statuses
                    .entry("unanswered".into())
                    .or_default() += case.parts.len() - answers.len();
            }
            judge_case(&case, &answers, &mut report.ledger)
        });
        if let Err(err) = verdict {
            report
                .failures
                .push(format!("{err}\n    {}", case.describe()));
        }
    }
}

/// Every row of the test's database, read straight from the file.
fn database_rows(app: &TestApp) -> HashMap<String, f64> {
    let connection = rusqlite::Connection::open_with_flags(
        &app.db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the database");
    let mut statement = connection.prepare("SELECT key, value FROM kv").unwrap();
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn seed() -> u64 {
    match std::env::var("HOSTILE_SEED") {
        Ok(seed) => seed.parse().expect("HOSTILE_SEED is a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

const WORKERS: usize = 16;
const WARM_UP_CASES: usize = 64;
const CASES: usize = 576;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hostile_requests_get_json_4xx_and_only_valid_writes_are_stored() {
    let seed = seed();
    eprintln!("hostile: seed {seed} (HOSTILE_SEED={seed} replays this run)");
    let (app, mut front) = start_system(&[]).await;
    let address = front.address;
    let started = Instant::now();

    // Each worker has its own generator and keys, so a seed replays the same cases per worker.
    let mut workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let mut rng = Rng(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let pool = key_pool(&mut rng, worker);
            (rng, pool, Report::default())
        })
        .collect();
    let mut rss = Vec::new();
    for cases in [WARM_UP_CASES, CASES] {
        let tasks: Vec<_> = workers
            .into_iter()
            .map(|(mut rng, pool, mut report)| {
                tokio::spawn(async move {
                    run_worker(address, &mut rng, &pool, cases, &mut report).await;
                    (rng, pool, report)
                })
            })
            .collect();
        workers = Vec::new();
        for task in tasks {
            workers.push(task.await.expect("a worker panicked"));
        }
        assert!(
            front.is_running(),
            "front-server died:\n{}",
            front.recent_log()
        );
        rss.push(front.rss_kib());
    }
    let elapsed = started.elapsed();

    let mut ledger = Ledger::default();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for (_, _, report) in workers {
        ledger.0.extend(report.ledger.0);
        tally.requests += report.tally.requests;
        for (status, count) in report.tally.statuses {
            *tally.statuses.entry(status).or_default() += count;
        }
        failures.extend(report.failures);
    }
    let cases = WORKERS * (WARM_UP_CASES + CASES);
    eprintln!(
        "hostile: {cases} connections, {} requests in {elapsed:?}; answers {:?}; RSS {} KiB after warm-up, {} KiB at the end",
        tally.requests, tally.statuses, rss[0], rss[1]
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {cases} connections went wrong, the first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
    assert!(tally.requests >= 10_000);

    // Still serving, and a read through the queue ends after every write acknowledged before it.
    let probe = br#"{"hostile:last": 42.5}"#;
    let request = Req::new("POST", "/api")
        .header("Content-Type", "application/json")
        .sized(probe);
    let answers = exchange(address, &request, None).await.expect("answered");
    assert_eq!(answers.first().map(|a| a.status), Some(200), "{answers:?}");
    let read = Req::new("GET", "/api?key=hostile%3Alast").finish();
    let answers = exchange(address, &read, None).await.expect("answered");
    let data = answers
        .first()
        .and_then(|a| a.json.as_ref()?["data"].as_f64());
    assert_eq!(data, Some(42.5), "{answers:?}");
    ledger.acknowledged("hostile:last", 42.5);

    // The database holds exactly what valid requests wrote: the last value per key.
    let rows = database_rows(&app);
    for (key, value) in &rows {
        let candidates = ledger.0.get(key);
        assert!(
            candidates.is_some_and(|c| c.contains(&Some(*value))),
            "seed {seed}: the database holds {key:?} = {value}, which no valid request wrote last \
             (candidates {candidates:?})"
        );
    }
    for (key, candidates) in &ledger.0 {
        assert!(
            rows.contains_key(key) || candidates.contains(&None),
            "seed {seed}: {key:?} was acknowledged as {candidates:?} but is not in the database"
        );
    }

    // Memory: flat after warm-up, and small in absolute terms.
    let (warm, end) = (rss[0], rss[1]);
    assert!(end < 256 * 1024, "RSS {end} KiB at the end");
    assert!(
        end < warm + 64 * 1024,
        "RSS grew from {warm} KiB to {end} KiB"
    );

    let status = front.terminate().await;
    assert!(status.success(), "{status}:\n{}", front.recent_log());
}

// ---------------------------------------------------------------------------------------------
// Slow, idle and half-closed connections

/// Waits until the server closes `reader`'s connection; returns when, and what it sent first.
async fn await_close(mut reader: impl tokio::io::AsyncRead + Unpin) -> (Instant, Vec<u8>) {
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "the server kept a connection open for {PATIENCE:?}"
    );
    (Instant::now(), received)
}

/// A connection that sends the start of a request and then one byte every 50 ms, forever:
/// the server sees progress but never a complete head.
async fn slow_loris(address: SocketAddr) -> tokio::task::JoinHandle<(Instant, Vec<u8>)> {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (reader, mut writer) = stream.into_split();
    tokio::spawn(async move {
        let trickle = async move {
            let _ = writer
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            // The point of this client is to be slow, so here waiting is the behaviour.
            while writer.write_all(b"z").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            closed = await_close(reader) => closed,
            () = trickle => (Instant::now(), Vec::new()),
        }
    })
}

/// A connection that sends nothing at all.
async fn silent(address: SocketAddr) -> tokio::task::JoinHandle<(Instant, Vec<u8>)> {
    let stream = TcpStream::connect(address).await.expect("connect");
    tokio::spawn(async move {
        let (reader, _writer) = stream.into_split();
        await_close(reader).await
    })
}

/// A complete `GET /health` on a kept-alive connection; returns the answer's status and body.
async fn get_health(stream: &mut TcpStream) -> (u16, serde_json::Value) {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0; 1024];
    // Read until one whole answer is in: it is small, and the connection stays open after it.
    let answer = loop {
        let n = stream.read(&mut buffer).await.expect("read the answer");
        assert!(n > 0, "closed before answering");
        received.extend_from_slice(&buffer[..n]);
        if let Ok(answers) = parse_answers(&received, None)
            && let Some(answer) = answers.into_iter().next()
        {
            break answer;
        }
    };
    (answer.status, answer.json.expect("a JSON body"))
}

#[tokio::test]
async fn slow_silent_and_idle_connections_are_closed_at_the_header_read_timeout() {
    let timeout = Duration::from_millis(500);
    let (_app, mut front) = start_system(&[("HEADER_READ_TIMEOUT_MS", "500")]).await;
    let address = front.address;
    let opened = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(slow_loris(address).await);
        clients.push(silent(address).await);
    }
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let answer = get_health(&mut stream).await;
        assert_eq!(answer, (200, serde_json::json!({"status": "ok"})));
        idle.push(tokio::spawn(await_close(stream)));
    }

    // Meanwhile, a normal client is served as usual.
    let mut stream = TcpStream::connect(address).await.unwrap();
    assert_eq!(get_health(&mut stream).await.0, 200);
    drop(stream);

    for client in clients.into_iter().chain(idle) {
        let (closed, received) = client.await.unwrap();
        assert!(
            received.is_empty(),
            "an answer to a request never finished: {}",
            show(&received)
        );
        assert!(closed - opened >= timeout, "closed before the timeout");
    }
    assert!(front.is_running());
}

#[tokio::test]
async fn at_the_connection_limit_a_new_client_waits_and_is_served_once_slow_ones_are_cut() {
    let timeout = Duration::from_millis(1000);
    let settings = [("HEADER_READ_TIMEOUT_MS", "1000"), ("MAX_CONNECTIONS", "4")];
    let (_app, mut front) = start_system(&settings).await;
    let address = front.address;
    let opened = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(slow_loris(address).await);
        slow.push(silent(address).await);
    }

    // Every slot is taken: the kernel completes the handshake, the server does not accept yet.
    let mut stream = TcpStream::connect(address).await.unwrap();
    let answer = get_health(&mut stream).await;
    let answered = Instant::now();

    assert_eq!(answer, (200, serde_json::json!({"status": "ok"})));
    // A slot frees only when the server cuts a slow client, at the header read timeout.
    assert!(
        answered - opened >= timeout,
        "answered after {:?}, while every slot was held",
        answered - opened
    );
    for client in slow {
        let (_, received) = client.await.unwrap();
        assert!(received.is_empty());
    }
    assert!(front.is_running());
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let (_app, mut front) = start_system(&[("HEADER_READ_TIMEOUT_MS", "10000")]).await;
    let address = front.address;
    let write = Req::new("POST", "/api")
        .header("Content-Type", "application/json")
        .sized(br#"{"half-closed": 7}"#);

    // `exchange` sends, shuts down its sending half, then reads.
    let answers = exchange(address, &write, None).await.unwrap();
    let read = Req::new("GET", "/api?key=half-closed").finish();
    let read_answers = exchange(address, &read, None).await.unwrap();
    // Half a head, then the half-close: the server must not wait for the rest.
    let started = Instant::now();
    let partial = exchange(address, b"GET /api?key=half-closed HTTP/1.1\r\nHo", None).await;

    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, 200, "{answers:?}");
    assert_eq!(read_answers[0].json.as_ref().unwrap()["data"], 7.0);
    assert!(partial.unwrap().is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the header timeout"
    );
    assert!(front.is_running());
}
