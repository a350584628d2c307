//! What a case is: the requests one connection carries, pipelined, and what the contract says
//! each must get. `generate` builds cases; `judge` holds the server's answers against them.

use super::wire::show;

// The contract's failure messages, word for word, and the front-server's default body limit,
// which these tests leave as it is.
pub const NOT_JSON: &str = "Incorrect input data format, must be JSON";
pub const BAD_PAIR: &str =
    "Acceptable only one pair key:value in JSON format, value must be a number";
pub const BAD_QUERY: &str = "Acceptable one parameter named 'key'";
pub const BAD_TYPE: &str = "Invalid Content-Type, must be 'application/json'";
pub const BODY_LIMIT: usize = 64 * 1024;

/// What a request must get. Every failure is also checked to be `{"success": false, ...}`.
#[derive(Debug, Clone)]
pub enum Expect {
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

pub struct Part {
    pub label: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
    /// The server may close the connection after answering it (an unread body, say), so the
    /// requests after it may go unanswered.
    pub ends: bool,
}

impl Part {
    pub fn new(label: &'static str, bytes: Vec<u8>, expect: Expect) -> Self {
        Self {
            label,
            bytes,
            expect,
            ends: false,
        }
    }

    pub fn ending(mut self) -> Self {
        self.ends = true;
        self
    }
}

/// One connection's worth: a few requests, pipelined. Only the last may break HTTP's framing,
/// so that every answer can be matched to the request it answers.
pub struct Case {
    pub parts: Vec<Part>,
}

impl Case {
    pub fn bytes(&self) -> Vec<u8> {
        self.parts.iter().flat_map(|p| p.bytes.clone()).collect()
    }

    pub fn head(&self) -> Option<usize> {
        self.parts
            .iter()
            .position(|p| matches!(p.expect, Expect::Head(_)))
    }

    pub fn describe(&self) -> String {
        let labels: Vec<_> = self.parts.iter().map(|p| p.label).collect();
        format!("[{}] {}", labels.join(" + "), show(&self.bytes()))
    }
}
