//! The front-server holds a bounded number of requests: beyond `MAX_IN_FLIGHT`, a request waits
//! for a slot within its deadline, then gets `503`.

use kv_e2e::app::{Options, PATIENCE, json, spawn_app_with};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_beyond_max_in_flight_get_503_within_their_deadline() {
    // Arrange: room for 2 requests, and no back-server, so that each read holds its slot for
    // its whole deadline.
    let app = spawn_app_with(Options {
        front_env: &[("MAX_IN_FLIGHT", "2"), ("RPC_TIMEOUT_MS", "500")],
        ..Options::front_only()
    })
    .await;

    // Act: 6 reads at once. 2 take the slots; the 4 that wait get one only when those end, at
    // the end of the first reads' deadline, which is within moments of their own.
    let reads: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{}/api?key=k", app.address);
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, body) = json(reqwest::get(url).await.unwrap()).await;
                (status, body, started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for read in reads {
        answers.push(read.await.unwrap());
    }

    // Assert
    let busy = answers.iter().filter(|(status, ..)| *status == 503).count();
    let timed_out = answers.iter().filter(|(status, ..)| *status == 504).count();
    assert_eq!((busy, timed_out), (4, 2), "{answers:?}");
    for (status, body, took) in &answers {
        if *status == 503 {
            assert_eq!(
                body["message"],
                "Too many requests in flight (at most 2), the request was not processed; retry it"
            );
        }
        assert!(
            *took < Duration::from_millis(500) + PATIENCE / 10,
            "{answers:?}"
        );
    }
    app.shutdown().await;
}
