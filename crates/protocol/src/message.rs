//! Message bodies and the one validated type both servers share: [`Key`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 256;

/// A key that is known to be valid: non-empty and at most [`MAX_KEY_BYTES`] bytes.
///
/// Both the HTTP layer and the consumer parse into this type, so an invalid key can be neither
/// accepted from a client nor applied from a hand-crafted message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

/// Why a string is not a [`Key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is longer than {MAX_KEY_BYTES} bytes")]
    TooLong,
}

impl Key {
    pub fn parse(raw: impl Into<String>) -> Result<Self, KeyError> {
        let raw = raw.into();
        if raw.is_empty() {
            Err(KeyError::Empty)
        } else if raw.len() > MAX_KEY_BYTES {
            Err(KeyError::TooLong)
        } else {
            Ok(Self(raw))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Key {
    type Error = KeyError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<Key> for String {
    fn from(key: Key) -> Self {
        key.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message on the request queue. Parsed as `Request` (owning its [`Key`]); built as
/// `Request<&Key>` too, so that a sender can serialize a key it still needs without copying it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request<K = Key> {
    /// Upsert `value` under `key`.
    Put { key: K, value: f64 },
    /// Read the value under `key`; answered with a [`Reply`].
    Get { key: K },
}

impl<K> Request<K> {
    /// The key the request is about.
    pub fn key(&self) -> &K {
        match self {
            Self::Put { key, .. } | Self::Get { key } => key,
        }
    }
}

impl Request {
    /// Parses a message body. JSON cannot encode NaN or infinities, so every parsed value is
    /// finite; SQLite's `REAL NOT NULL` column relies on that.
    pub fn from_slice(body: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(body)
    }
}

impl<K: Serialize> Request<K> {
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a request always serializes")
    }
}

/// The back-server's answer to a [`Request::Get`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    Found { value: f64 },
    NotFound,
}

impl Reply {
    pub fn from_slice(body: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(body)
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a reply always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        let put = Request::Put {
            key: Key::parse("é").unwrap(),
            value: -0.5,
        };
        assert_eq!(Request::from_slice(&put.to_vec()).unwrap(), put);
        let key = Key::parse("k").unwrap();
        let get = Request::Get { key: &key };
        assert_eq!(get.to_vec(), br#"{"op":"get","key":"k"}"#);
    }

    #[test]
    fn a_message_with_an_invalid_key_does_not_parse() {
        assert!(Request::from_slice(br#"{"op":"get","key":""}"#).is_err());
        let long = format!(
            r#"{{"op":"get","key":"{}"}}"#,
            "k".repeat(MAX_KEY_BYTES + 1)
        );
        assert!(Request::from_slice(long.as_bytes()).is_err());
    }

    #[test]
    fn a_put_without_a_number_does_not_parse() {
        assert!(Request::from_slice(br#"{"op":"put","key":"k","value":"1"}"#).is_err());
        assert!(Request::from_slice(br#"{"op":"put","key":"k"}"#).is_err());
        assert!(Request::from_slice(br#"{"op":"delete","key":"k"}"#).is_err());
    }

    #[test]
    fn key_length_is_counted_in_bytes() {
        assert!(Key::parse("é".repeat(128)).is_ok());
        assert_eq!(Key::parse("é".repeat(129)), Err(KeyError::TooLong));
    }
}
