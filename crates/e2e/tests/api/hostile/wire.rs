//! Raw HTTP/1.1 over TCP, because the interesting requests are those a client library refuses to
//! send: one exchange per connection (write, half-close, read until the server closes), the
//! answers parsed from the bytes, and the clients that are slow or silent on purpose.

use kv_e2e::app::PATIENCE;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The parsed body when the answer says it is JSON; `None` for an empty body.
    pub json: Option<serde_json::Value>,
}

/// Sends `request` on a new connection and returns the answers it got, in order; `head` is the
/// index of the request that is a HEAD, if any. `Err` when the server neither answered nor
/// closed within [`PATIENCE`], or answered something that is not HTTP with a JSON or empty body.
pub async fn exchange(
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

pub fn parse_answers(mut bytes: &[u8], head: Option<usize>) -> Result<Vec<Answer>, String> {
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
pub fn show(bytes: &[u8]) -> String {
    let shown: String = bytes.escape_ascii().to_string().chars().take(300).collect();
    if bytes.len() > 300 {
        format!("{shown}… ({} bytes)", bytes.len())
    } else {
        shown
    }
}

/// Waits until the server closes `reader`'s connection; returns when, and what it sent first.
pub async fn await_close(mut reader: impl tokio::io::AsyncRead + Unpin) -> (Instant, Vec<u8>) {
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
pub async fn slow_loris(address: SocketAddr) -> tokio::task::JoinHandle<(Instant, Vec<u8>)> {
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
pub async fn silent(address: SocketAddr) -> tokio::task::JoinHandle<(Instant, Vec<u8>)> {
    let stream = TcpStream::connect(address).await.expect("connect");
    tokio::spawn(async move {
        let (reader, _writer) = stream.into_split();
        await_close(reader).await
    })
}

/// A complete `GET /health` on a kept-alive connection; returns the answer's status and body.
pub async fn get_health(stream: &mut TcpStream) -> (u16, serde_json::Value) {
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
