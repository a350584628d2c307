//! Logging and metrics shared by both servers: one line per event on stderr, filtered by
//! `RUST_LOG`, and one Prometheus recorder per process, rendered by each server's `GET /metrics`.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging settings both servers share.
#[derive(Debug, Clone, clap::Args)]
pub struct LogSettings {
    /// Log line format on stderr; the filter is RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default of `info`.
///
/// lapin logs every channel that RabbitMQ closes as an error, among them the passive declares
/// that find a queue missing, which is how the servers check the partition layout at each
/// connect. The closes that matter end a server's link or setup, which logs them with their
/// meaning; so lapin's own lines about channels are off, unless `RUST_LOG` names lapin.
pub fn init_tracing(settings: &LogSettings) {
    let configured = std::env::var("RUST_LOG").ok();
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if !configured.is_some_and(|directives| directives.contains("lapin")) {
        filter = filter.add_directive("lapin::channel=off".parse().expect("a valid directive"));
    }
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Text => subscriber.with_ansi(std::io::stderr().is_terminal()).init(),
        // The current span's fields (a request's id, method and path) go in every line.
        LogFormat::Json => subscriber.json().with_current_span(true).init(),
    }
}

/// Upper bounds of the latency histograms' buckets, in seconds: from a cached GET on the loopback
/// (under a millisecond) through a confirm waiting for the broker's fsync under load (tens of ms)
/// to the read deadline (5 s by default) and past it.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the histograms of requests per message and per store batch: powers of two up
/// to the largest `BATCH_SIZE` (a `u16`; the default is 128).
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 65535.0,
];

/// How often histograms are folded into their buckets. The recorder keeps every sample until then
/// (16 bytes each): without it, samples recorded between two scrapes pile up in memory (and with
/// no scraper at all, forever); every 5 s, they were 11 MB at 140,000 requests a second.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Installs the process's Prometheus recorder on the first call and returns its handle; later
/// calls return the same handle. A server calls it in `build`, before it records anything: the
/// `metrics` macros are no-ops until a recorder is installed.
///
/// One recorder per process, because `metrics` has one global recorder. Tests that run several
/// servers in one process therefore see every server's series in every server's `/metrics`,
/// summed where names and labels coincide; a test that checks numbers runs the servers as
/// processes.
pub fn install_metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .and_then(|builder| {
                ["kv_batch_size", "kv_requests_per_message"]
                    .into_iter()
                    .try_fold(builder, |builder, name| {
                        builder
                            .set_buckets_for_metric(Matcher::Full(name.into()), BATCH_SIZE_BUCKETS)
                    })
            })
            .expect("the bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // Only code outside this crate could have installed one; its series are not ours.
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        // A thread rather than a task: the first caller's runtime may be a test's, which ends
        // long before the process does.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            })
            .expect("spawn the metrics upkeep thread");
        handle
    })
}

/// `GET /metrics`: every series of this process in Prometheus's text format.
pub async fn render_metrics() -> impl IntoResponse {
    render_metrics_with(|_| ())
}

/// [`render_metrics`]' answer, followed by what `more` writes: series a server keeps outside the
/// recorder, in the same format.
pub fn render_metrics_with(more: impl FnOnce(&mut String)) -> impl IntoResponse {
    let mut text = install_metrics().render();
    more(&mut text);
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}
