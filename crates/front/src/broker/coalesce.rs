//! What goes into one message: the requests a publisher task finds ready when it gets to run.
//!
//! Nagle's algorithm without its delay: a request that finds the publisher idle is published at
//! once, alone; requests that arrive while it is busy (publishing the previous message, or not
//! yet scheduled on a loaded machine) wait in its channel and go out together in the next
//! message. The busier the server, the fuller the messages, and the fewer the broker handles per
//! request; no request ever waits for others to arrive.

use kv_protocol::MAX_BATCH;
use tokio::sync::mpsc;

/// A request bound for one partition's queue.
pub(super) trait Partitioned {
    fn partition(&self) -> usize;
}

/// Takes `first` and whatever `incoming` holds right now, never waiting for more, up to
/// [`MAX_BATCH`] in all. Returns them grouped by partition, each group in arrival order: one
/// message per group keeps the order in which requests for the same queue arrived.
pub(super) fn take_ready<T: Partitioned>(
    first: T,
    incoming: &mut mpsc::Receiver<T>,
) -> Vec<(usize, Vec<T>)> {
    let mut groups: Vec<(usize, Vec<T>)> = Vec::with_capacity(1);
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(request) = next {
        let partition = request.partition();
        // Linear: a turn holds few partitions, and most deployments have one.
        match groups.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, group)) => group.push(request),
            None => groups.push((partition, vec![request])),
        }
        taken += 1;
        next = if taken < MAX_BATCH {
            incoming.try_recv().ok()
        } else {
            None
        };
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Request(usize, u32);

    impl Partitioned for Request {
        fn partition(&self) -> usize {
            self.0
        }
    }

    #[tokio::test]
    async fn takes_what_is_ready_grouped_by_partition_in_arrival_order() {
        let (sender, mut incoming) = mpsc::channel(16);
        for request in [Request(1, 2), Request(0, 3), Request(1, 4)] {
            sender.send(request).await.unwrap();
        }
        let groups = take_ready(Request(0, 1), &mut incoming);
        assert_eq!(
            groups,
            [
                (0, vec![Request(0, 1), Request(0, 3)]),
                (1, vec![Request(1, 2), Request(1, 4)]),
            ]
        );
        assert!(incoming.try_recv().is_err(), "everything ready was taken");
    }

    #[tokio::test]
    async fn a_lone_request_goes_alone() {
        let (_sender, mut incoming) = mpsc::channel::<Request>(16);
        assert_eq!(
            take_ready(Request(0, 1), &mut incoming),
            [(0, vec![Request(0, 1)])]
        );
    }

    #[tokio::test]
    async fn takes_at_most_one_full_batch_and_leaves_the_rest_in_order() {
        let (sender, mut incoming) = mpsc::channel(MAX_BATCH + 8);
        for n in 1..MAX_BATCH as u32 + 5 {
            sender.send(Request(0, n)).await.unwrap();
        }
        let groups = take_ready(Request(0, 0), &mut incoming);
        assert_eq!(groups.len(), 1);
        let taken: Vec<u32> = groups[0].1.iter().map(|request| request.1).collect();
        assert_eq!(taken, (0..MAX_BATCH as u32).collect::<Vec<_>>());
        assert_eq!(incoming.try_recv().unwrap(), Request(0, MAX_BATCH as u32));
    }
}
