//! Looks into RabbitMQ's queues, and their deletion once a test or a benchmark run is done, so
//! that nothing is left on a broker others share.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

/// The broker's URL: `AMQP_URL`, else the servers' own default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| kv_runtime::DEFAULT_AMQP_URL.into())
}

/// Messages ready in `queue` (not counting those delivered and not yet acked).
pub async fn ready_messages(amqp_url: &str, queue: &str) -> anyhow::Result<u32> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    Ok(declared?.message_count())
}

/// Deletes `queues`, whether or not they exist.
pub async fn delete_queues(amqp_url: &str, queues: &[String]) -> anyhow::Result<()> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// [`delete_queues`] for `Drop`, which cannot await and may run inside a runtime: on a thread
/// with a runtime of its own. Best effort: a broker that is away keeps the queues.
pub fn delete_queues_now(amqp_url: &str, queues: Vec<String>) {
    let url = amqp_url.to_owned();
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the cleanup");
        let _ = runtime.block_on(delete_queues(&url, &queues));
    });
    let _ = cleanup.join();
}
