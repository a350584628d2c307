//! Protocol versions, and version 2's batches: many requests in one message, and all their
//! answers in one reply.
//!
//! RabbitMQ's cost is per message far more than per byte, so a front-server that puts the
//! requests it has ready into one message passes the rate at which the broker can take messages.
//! A message's AMQP `type` property says how its body is laid out ([`Format`]):
//!
//! - **Version 1**, no `type`: the body is one [`Request`], and the reply to a read one
//!   [`Reply`]. Front-servers before batching sent only this; back-servers read it still, so
//!   that a rolling upgrade can replace the back-servers first and the front-servers after.
//! - **Version 2**, `type` [`BATCH_TYPE`]: the body is a JSON array of 1 to [`MAX_BATCH`]
//!   requests, applied in array order, which is the order the front-server received them in. The
//!   reply to a batch that holds reads carries the same `type` and a JSON array with one
//!   [`Reply`] per read, in the order of the reads. Front-servers send only this.
//!
//! A batch is one message for everything else too: one `message_id`, one confirm, one ack, one
//! dead letter. A batch that cannot be read whole (bad JSON, one invalid entry, too many) is
//! dead-lettered whole: applying the entries around a bad one would break the order the writer
//! saw. The `x-request-id` header of a batch holds each request's id, in order
//! ([`request_ids_header`](crate::request_ids_header)).

use crate::message::{Reply, Request};
use lapin::types::ShortString;
use serde::Serialize;

/// The AMQP `type` of a version 2 message: a batch of requests, or the replies to its reads.
pub const BATCH_TYPE: &str = "kv.batch.v2";

/// The most requests one batch may hold. It bounds a message's size (keys are at most 256
/// bytes) and how much one back-server transaction holds per message.
pub const MAX_BATCH: usize = 256;

/// How a message's body is laid out, told by its AMQP `type` property; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Version 1: one request, or one reply.
    Single,
    /// Version 2: an array of requests, or of the replies to its reads.
    Batch,
}

/// Why a message is not something this version of the protocol can read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(
        "unknown message type '{0}': this back-server reads single requests (no type) and \
         batches ('{BATCH_TYPE}')"
    )]
    UnknownType(String),
    #[error("unparseable request: {0}")]
    Unparseable(#[from] serde_json::Error),
    #[error("an empty batch")]
    Empty,
    #[error("a batch of {0} requests, more than the {MAX_BATCH} allowed")]
    TooLarge(usize),
}

impl Format {
    /// The format of a message whose `type` property is `message_type`.
    pub fn of(message_type: Option<&ShortString>) -> Result<Self, WireError> {
        match message_type.map(ShortString::as_str) {
            None => Ok(Self::Single),
            Some(BATCH_TYPE) => Ok(Self::Batch),
            Some(other) => Err(WireError::UnknownType(other.to_owned())),
        }
    }

    /// The `type` property of a message in this format.
    pub fn message_type(self) -> Option<&'static str> {
        match self {
            Self::Single => None,
            Self::Batch => Some(BATCH_TYPE),
        }
    }

    /// Parses the requests of a message body, in order. Every request parsed is valid
    /// ([`Request::from_slice`]); one that is not fails the whole message.
    pub fn requests(self, body: &[u8]) -> Result<Vec<Request>, WireError> {
        match self {
            Self::Single => Ok(vec![Request::from_slice(body)?]),
            Self::Batch => {
                let requests: Vec<Request> = serde_json::from_slice(body)?;
                match requests.len() {
                    0 => Err(WireError::Empty),
                    n if n > MAX_BATCH => Err(WireError::TooLarge(n)),
                    _ => Ok(requests),
                }
            }
        }
    }

    /// The body of the reply to a message in this format, from the replies to its reads in
    /// order. A version 1 message holds one request, so its reply holds one reply.
    pub fn reply_body(self, replies: &[Reply]) -> Vec<u8> {
        match (self, replies) {
            (Self::Single, [reply]) => reply.to_vec(),
            (Self::Single, _) => unreachable!("a single message holds one read"),
            (Self::Batch, replies) => {
                serde_json::to_vec(replies).expect("replies always serialize")
            }
        }
    }

    /// Parses the body of a reply in this format: the replies to the reads of the message it
    /// answers, in order.
    pub fn replies(self, body: &[u8]) -> serde_json::Result<Vec<Reply>> {
        match self {
            Self::Single => Ok(vec![Reply::from_slice(body)?]),
            Self::Batch => serde_json::from_slice(body),
        }
    }
}

/// The body of a batch of `requests`, in order. Takes `Request<&Key>`, so that a sender
/// serializes keys it holds without copying them; that they are [`Key`](crate::Key)s is why a
/// front-server cannot build a batch with an invalid entry.
pub fn batch_body<K: Serialize>(requests: &[Request<K>]) -> Vec<u8> {
    debug_assert!((1..=MAX_BATCH).contains(&requests.len()));
    serde_json::to_vec(requests).expect("a request always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key;

    fn key(raw: &str) -> Key {
        Key::parse(raw).unwrap()
    }

    #[test]
    fn the_type_property_tells_the_format() {
        assert_eq!(Format::of(None).unwrap(), Format::Single);
        assert_eq!(Format::of(Some(&BATCH_TYPE.into())).unwrap(), Format::Batch);
        let err = Format::of(Some(&"kv.batch.v3".into())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown message type 'kv.batch.v3'")
        );
        for format in [Format::Single, Format::Batch] {
            let message_type = format.message_type().map(ShortString::from);
            assert_eq!(Format::of(message_type.as_ref()).unwrap(), format);
        }
    }

    #[test]
    fn a_batch_is_a_json_array_of_requests_in_order() {
        let (a, b) = (key("a"), key("b"));
        let body = batch_body(&[
            Request::Put {
                key: &a,
                value: 1.5,
            },
            Request::Get { key: &b },
            Request::Put {
                key: &a,
                value: 2.0,
            },
        ]);
        assert_eq!(
            body,
            br#"[{"op":"put","key":"a","value":1.5},{"op":"get","key":"b"},{"op":"put","key":"a","value":2.0}]"#
        );
        assert_eq!(
            Format::Batch.requests(&body).unwrap(),
            [
                Request::Put {
                    key: a.clone(),
                    value: 1.5
                },
                Request::Get { key: b },
                Request::Put { key: a, value: 2.0 },
            ]
        );
    }

    #[test]
    fn version_1_bodies_still_parse() {
        let requests = Format::Single
            .requests(br#"{"op":"put","key":"k","value":3}"#)
            .unwrap();
        assert_eq!(
            requests,
            [Request::Put {
                key: key("k"),
                value: 3.0
            }]
        );
        assert_eq!(
            Format::Single.reply_body(&[Reply::NotFound]),
            br#"{"status":"not_found"}"#
        );
    }

    #[test]
    fn one_bad_entry_fails_the_whole_batch() {
        let bad_key = br#"[{"op":"put","key":"a","value":1},{"op":"get","key":""}]"#;
        let err = Format::Batch.requests(bad_key).unwrap_err();
        assert!(err.to_string().contains("key is empty"), "{err}");
        let no_value = br#"[{"op":"put","key":"a","value":1},{"op":"put","key":"b"}]"#;
        assert!(Format::Batch.requests(no_value).is_err());
        assert!(matches!(
            Format::Batch.requests(b"[]"),
            Err(WireError::Empty)
        ));
        // A version 1 body sent as a batch is not an array: refused, not guessed at.
        let single = br#"{"op":"get","key":"a"}"#;
        assert!(Format::Batch.requests(single).is_err());
        let too_many = format!(
            "[{}]",
            vec![r#"{"op":"get","key":"a"}"#; MAX_BATCH + 1].join(",")
        );
        assert!(matches!(
            Format::Batch.requests(too_many.as_bytes()),
            Err(WireError::TooLarge(n)) if n == MAX_BATCH + 1
        ));
    }

    #[test]
    fn replies_to_a_batch_are_an_array_in_the_order_of_its_reads() {
        let replies = [Reply::Found { value: 1.0 }, Reply::NotFound];
        let body = Format::Batch.reply_body(&replies);
        assert_eq!(
            body,
            br#"[{"status":"found","value":1.0},{"status":"not_found"}]"#
        );
        assert_eq!(Format::Batch.replies(&body).unwrap(), replies);
        assert_eq!(
            Format::Single
                .replies(br#"{"status":"found","value":2}"#)
                .unwrap(),
            [Reply::Found { value: 2.0 }]
        );
    }
}
