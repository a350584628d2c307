//! How the keyspace is split over queues: the partition a key belongs to, and the queue of each
//! partition.
//!
//! A key's partition is `FNV-1a-64(UTF-8 bytes of the key) mod N`, with FNV-1a's standard 64-bit
//! offset basis (`0xcbf29ce484222325`) and prime (`0x100000001b3`). FNV-1a is fixed by its
//! definition, independent of the platform, the Rust version and this crate's version, which is
//! what a partition map stored in other people's databases needs; the tests pin golden values.

use crate::Key;
use std::fmt;
use std::str::FromStr;

/// The kind of RabbitMQ queue that carries the requests (`KV_QUEUE_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// A classic queue: kept on the node that declared it.
    Classic,
    /// A quorum queue: replicated over the cluster's nodes by Raft, and kept through the loss of
    /// a minority of them.
    Quorum,
}

impl QueueType {
    /// The value of the `x-queue-type` argument.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            other => Err(format!(
                "unknown queue type '{other}': expected 'quorum' or 'classic'"
            )),
        }
    }
}

/// The request queues: `partitions` of them, named after `queue`, all of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    queue: String,
    partitions: u32,
    queue_type: QueueType,
}

impl Layout {
    /// The layout of `partitions` queues named after `queue`.
    ///
    /// # Panics
    /// If `partitions` is 0: the settings refuse it.
    pub fn new(queue: impl Into<String>, partitions: u32, queue_type: QueueType) -> Self {
        assert!(partitions > 0, "a layout has at least one partition");
        Self {
            queue: queue.into(),
            partitions,
            queue_type,
        }
    }

    /// The base name (`KV_QUEUE`).
    pub fn base(&self) -> &str {
        &self.queue
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// The partition that holds `key`.
    pub fn partition_of(&self, key: &Key) -> u32 {
        partition_of(key.as_str(), self.partitions)
    }

    /// The request queue of `partition`: the base name itself when there is one partition, else
    /// `<base>.<partition>`.
    pub fn queue(&self, partition: u32) -> String {
        if self.partitions == 1 {
            self.queue.clone()
        } else {
            format!("{}.{partition}", self.queue)
        }
    }

    /// Every partition's request queue, in partition order.
    pub fn queues(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.partitions).map(|partition| self.queue(partition))
    }
}

/// The partition, among `partitions`, of the key `key` (see the module docs).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = key.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    (hash % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently of this code (FNV-1a's published definition, in Python). A change
    /// here moves keys between partitions in every deployment: never edit these values.
    #[test]
    fn partitions_are_pinned_by_golden_values() {
        let golden: &[(&str, [u32; 4])] = &[
            // key, then its partition among 2, 3, 4 and 7
            ("a", [0, 1, 0, 5]),
            ("temperature", [1, 0, 1, 0]),
            ("humidity", [0, 0, 0, 5]),
            ("key-0", [1, 2, 1, 6]),
            ("ключ", [1, 0, 1, 6]),
            ("🔑", [1, 1, 3, 4]),
        ];
        for (key, expected) in golden {
            let actual = [2, 3, 4, 7].map(|n| partition_of(key, n));
            assert_eq!(actual, *expected, "key {key:?}");
        }
        // FNV-1a's published test vector for "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(
            partition_of("a", 1000),
            (0xaf63_dc4c_8601_ec8c_u64 % 1000) as u32
        );
    }

    #[test]
    fn one_partition_keeps_the_queue_name_and_more_number_them() {
        let one = Layout::new("kv.requests", 1, QueueType::Quorum);
        assert_eq!(one.queues().collect::<Vec<_>>(), ["kv.requests"]);
        let three = Layout::new("kv.requests", 3, QueueType::Quorum);
        assert_eq!(
            three.queues().collect::<Vec<_>>(),
            ["kv.requests.0", "kv.requests.1", "kv.requests.2"]
        );
    }

    #[test]
    fn keys_spread_over_every_partition() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[partition_of(&format!("key-{i}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn queue_types_parse_from_their_names_only() {
        assert_eq!("quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse(), Ok(QueueType::Classic));
        assert!("Quorum".parse::<QueueType>().is_err());
    }
}
