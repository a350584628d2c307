//! Request ids on the wire: the `x-request-id` header that tells the back-server, for its logs and
//! dead letters, which HTTP request each entry of a message came from.
//!
//! A message of 30 writes carries 30 ids. As text in an AMQP array each costs 41 bytes (a type
//! byte, a length and 36 characters for a UUID), together as much as the writes themselves, and
//! RabbitMQ stores and moves every byte of them: about 7% of the write rate. So the header is one
//! AMQP byte array (field type `x`) with the ids in the order of the message's requests, each
//! either
//!
//! - `0x00` and the 16 bytes of a UUID, for an id that is one in its canonical form (lower-case
//!   hex, hyphenated: what the front-server makes when the client sent no id), or
//! - `0x01`, a 4-byte big-endian length `n`, and `n` bytes: any other id, as its text.
//!
//! Readers write a UUID back in its canonical form, so every id reads back exactly as sent.
//! Back-servers also read the forms that front-servers sent before this one: an array of long
//! strings (batches), or one long string (version 1). The header is for people reading logs, so
//! an entry it cannot read shows as `-` and never fails a message.

use crate::topology::REQUEST_ID_HEADER;
use lapin::types::{AMQPValue, ByteArray, FieldTable};
use std::fmt;
use std::sync::Arc;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

const UUID_TAG: u8 = 0;
const TEXT_TAG: u8 = 1;

/// One request's id, as it travels in a message: 17 bytes for a UUID, its text otherwise. A
/// clone costs no allocation: the front-server hands the id of a request to its code at every
/// poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    /// A UUID written in its canonical form.
    Uuid(Uuid),
    /// Any other id.
    Text(Arc<str>),
}

impl RequestId {
    /// The id whose text is `id`.
    pub fn new(id: &str) -> Self {
        // Of the forms a UUID parses from, only the hyphenated one is this long; it is canonical
        // when no hex digit is upper-case. Counted rather than searched for: a count of all 36
        // bytes compiles to a few vector instructions, a search to a loop over each.
        if id.len() == Hyphenated::LENGTH
            && id.bytes().filter(u8::is_ascii_uppercase).count() == 0
            && let Ok(uuid) = Uuid::try_parse(id)
        {
            return Self::Uuid(uuid);
        }
        Self::Text(id.into())
    }

    fn encode(&self, into: &mut Vec<u8>) {
        match self {
            Self::Uuid(uuid) => {
                into.push(UUID_TAG);
                into.extend_from_slice(uuid.as_bytes());
            }
            Self::Text(text) => {
                into.push(TEXT_TAG);
                let length = u32::try_from(text.len()).expect("a header is less than 4 GiB");
                into.extend_from_slice(&length.to_be_bytes());
                into.extend_from_slice(text.as_bytes());
            }
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uuid(uuid) => fmt::Display::fmt(&uuid.hyphenated(), f),
            Self::Text(text) => f.write_str(text),
        }
    }
}

/// The `x-request-id` header of a message whose requests have these ids, in order.
pub fn request_ids_header<'a>(ids: impl ExactSizeIterator<Item = &'a RequestId>) -> FieldTable {
    let mut bytes = Vec::with_capacity(ids.len() * (1 + 16));
    for id in ids {
        id.encode(&mut bytes);
    }
    let mut headers = FieldTable::default();
    headers.insert(
        REQUEST_ID_HEADER.into(),
        AMQPValue::ByteArray(ByteArray::from(bytes)),
    );
    headers
}

/// The request ids of a message's requests, in order, from its `headers`, in any form a
/// front-server has sent them: one for a version 1 message, one per request for a batch, none if
/// it has no such header. An entry that cannot be read is `-`, and ends a byte array.
pub fn request_ids(headers: Option<&FieldTable>) -> Vec<String> {
    match headers.and_then(|headers| headers.inner().get(REQUEST_ID_HEADER)) {
        Some(AMQPValue::ByteArray(bytes)) => decode(bytes.as_slice()),
        Some(AMQPValue::LongString(id)) => vec![id.to_string()],
        Some(AMQPValue::FieldArray(ids)) => ids
            .as_slice()
            .iter()
            .map(|id| match id {
                AMQPValue::LongString(id) => id.to_string(),
                _ => "-".to_owned(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn decode(mut bytes: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        let id = match tag {
            UUID_TAG => rest.split_first_chunk::<16>().map(|(uuid, rest)| {
                bytes = rest;
                Uuid::from_bytes(*uuid).hyphenated().to_string()
            }),
            TEXT_TAG => rest
                .split_first_chunk::<4>()
                .and_then(|(length, rest)| {
                    rest.split_at_checked(u32::from_be_bytes(*length) as usize)
                })
                .map(|(text, rest)| {
                    bytes = rest;
                    String::from_utf8_lossy(text).into_owned()
                }),
            _ => None,
        };
        match id {
            Some(id) => ids.push(id),
            None => {
                ids.push("-".to_owned());
                break;
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    const MADE: &str = "0b6d3e1c-5f0a-4c7e-9a51-2f3d4e5a6b7c";

    #[test]
    fn a_canonical_uuid_travels_in_17_bytes_and_any_other_id_as_its_text() {
        assert!(matches!(RequestId::new(MADE), RequestId::Uuid(_)));
        // Not canonical: reading them back as UUIDs would change them.
        for text in [
            "0B6D3E1C-5F0A-4C7E-9A51-2F3D4E5A6B7C",
            "0b6d3e1c-5f0a-4c7e-9a51-2F3d4e5a6b7c",
            "0b6d3e1c5f0a4c7e9a512f3d4e5a6b7c",
            "{0b6d3e1c-5f0a-4c7e-9a51-2f3d4e5a6b7c}",
            "trace-me-42",
            "-",
        ] {
            assert_eq!(RequestId::new(text), RequestId::Text(text.into()));
        }
        let ids = [MADE, "trace-me-42", "", MADE].map(RequestId::new);
        let headers = request_ids_header(ids.iter());
        let Some(AMQPValue::ByteArray(bytes)) = headers.inner().get(REQUEST_ID_HEADER) else {
            panic!("a byte array: {headers:?}")
        };
        assert_eq!(bytes.as_slice().len(), 17 + (5 + 11) + 5 + 17);
        assert_eq!(&bytes.as_slice()[17..22], b"\x01\0\0\0\x0b");
        assert_eq!(request_ids(Some(&headers)), [MADE, "trace-me-42", "", MADE]);
        assert_eq!(
            ids.map(|id| id.to_string()),
            [MADE, "trace-me-42", "", MADE]
        );
    }

    #[test]
    fn what_earlier_front_servers_sent_still_reads() {
        let mut batch = FieldTable::default();
        let ids = ["r1", "r2"].map(|id| AMQPValue::LongString(id.into()));
        batch.insert(
            REQUEST_ID_HEADER.into(),
            AMQPValue::FieldArray(FieldArray::from(ids.to_vec())),
        );
        assert_eq!(request_ids(Some(&batch)), ["r1", "r2"]);
        let mut single = FieldTable::default();
        single.insert(REQUEST_ID_HEADER.into(), AMQPValue::LongString("r".into()));
        assert_eq!(request_ids(Some(&single)), ["r"]);
        assert!(request_ids(None).is_empty());
    }

    #[test]
    fn an_unreadable_entry_shows_as_a_dash_and_ends_the_ids() {
        let read = |bytes: &[u8]| {
            let mut headers = FieldTable::default();
            headers.insert(REQUEST_ID_HEADER.into(), AMQPValue::ByteArray(bytes.into()));
            request_ids(Some(&headers))
        };
        assert_eq!(read(b"\x01\0\0\0\x01ab"), ["a", "-"]);
        assert_eq!(read(b"\x01\0\0\0\x09short"), ["-"]);
        assert_eq!(read(&[0; 10]), ["-"]);
        assert!(read(b"").is_empty());
    }
}
