//! Prints what this machine's RabbitMQ can do on its own: the ceilings the benchmark compares the
//! system against. `limits-probe --help` lists the settings.

use clap::Parser;
use std::time::Duration;

/// Measures RabbitMQ's own limits on this machine: durable writes and request/reply round trips.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    broker: kv_bench::Broker,
    /// Seconds each probe runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Request/reply round trips kept in flight.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// The type of the probe's queues: `classic` or `quorum`, as the system's `KV_QUEUE_TYPE`.
    #[arg(long, default_value = "classic")]
    queue_type: kv_protocol::QueueType,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limits = kv_bench::probe::measure(
        &args.broker.amqp_url,
        Duration::from_secs(args.seconds),
        args.in_flight,
        args.queue_type,
    )
    .await?;
    println!(
        "durable writes (persistent, confirmed, consumed): {:>8.0} msg/s",
        limits.durable_writes_per_sec
    );
    println!(
        "request/reply, {} in flight:                     {:>8.0} round trips/s  p50 {:.2} ms  p99 {:.2} ms",
        limits.in_flight,
        limits.round_trips_per_sec,
        limits.round_trip_p50.as_secs_f64() * 1e3,
        limits.round_trip_p99.as_secs_f64() * 1e3,
    );
    Ok(())
}
