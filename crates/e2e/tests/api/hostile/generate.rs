//! The seeded generator of hostile cases. Each draw from [`Rng`](kv_e2e::rng::Rng) happens in a fixed order, so a
//! seed replays the same requests byte for byte; keep that order when changing anything here.
//! [`generate`] picks a case's mix of requests: [`framed_part`]s, which keep HTTP's framing, then
//! one [`last_part`], which may break it.

use super::case::{BAD_PAIR, BAD_QUERY, BAD_TYPE, BODY_LIMIT, Case, Expect, NOT_JSON, Part};
pub use kv_e2e::rng::Rng;

/// A request head under construction; raw bytes, so that it can hold what a client should not.
pub struct Req(Vec<u8>);

impl Req {
    pub fn new(method: &str, target: &str) -> Self {
        Self(format!("{method} {target} HTTP/1.1\r\nHost: fuzz\r\n").into_bytes())
    }

    fn line(line: &[u8]) -> Self {
        Self([line, b"\r\n"].concat())
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value.as_ref());
        self.0.extend_from_slice(b"\r\n");
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }

    pub fn sized(self, body: &[u8]) -> Vec<u8> {
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
pub fn key_pool(rng: &mut Rng, worker: usize) -> Vec<String> {
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
        0 => ((rng.next_u64() as i64) % 1_000_000).to_string(),
        1 => format!("{}.{:03}", rng.below(1000), rng.below(1000)),
        2 => format!("-{}e{}", 1 + rng.below(99), rng.below(600) as i64 - 300),
        3 => {
            let value = f64::from_bits(rng.next_u64());
            if value.is_finite() {
                serde_json::to_string(&value).unwrap()
            } else {
                "0.5".into()
            }
        }
        4 => rng
            .pick(&["0", "-0", "0.0", "1E2", "1e-2", "-0.0e0"])
            .to_string(),
        _ => rng.next_u64().to_string(),
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
            // Not "/": it answers `GET` with a pointer to the docs (and `405` to other methods).
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

pub fn generate(rng: &mut Rng, pool: &[String]) -> Case {
    let count = *rng.pick(&[1, 1, 1, 1, 2, 2, 3]);
    let mut parts: Vec<_> = (1..count).map(|_| framed_part(rng, pool)).collect();
    parts.push(last_part(rng, pool));
    Case { parts }
}
