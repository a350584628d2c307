//! The series every HTTP request adds to, `kv_http_requests_total`,
//! `kv_http_request_duration_seconds` and `kv_http_requests_in_flight`, counted by each thread in
//! memory of its own and added up when `/metrics` is scraped.
//!
//! Through the `metrics` recorder, each request cost an atomic add on a counter both cores share
//! and, for the histogram, a sample pushed with a timestamp of its own into a bucket both cores
//! share (a lock-free list whose every push pins a garbage-collection epoch): about a quarter of
//! a microsecond, more than a tenth of what a request to `/health` costs in all. Here a thread
//! finds the counts of its series in a short list of its own and adds to plain counters that only
//! it writes; a scrape reads every thread's counters and writes the two series with the
//! exporter's own formatting helpers, as the exporter would.

use kv_runtime::LATENCY_BUCKETS;
use metrics_exporter_prometheus::formatting::{
    sanitize_label_value, write_help_line, write_type_line,
};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const REQUESTS: &str = "kv_http_requests_total";
const REQUESTS_HELP: &str = "HTTP requests answered, by route, method and status";
const DURATION: &str = "kv_http_request_duration_seconds";
const DURATION_HELP: &str =
    "Time from a request's arrival to its answer, by route, method and status";
const IN_FLIGHT: &str = "kv_http_requests_in_flight";
const IN_FLIGHT_HELP: &str = "HTTP requests being served right now";

/// What tells one series from another.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Labels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

/// One thread's requests of one series. Only that thread writes them, so an add is a load and a
/// store, not a read-modify-write that would lock the cache line; a scrape may read a count one
/// request old, as it may with any counter.
struct Counts {
    /// Requests by latency: `buckets[i]` holds those above `LATENCY_BUCKETS[i - 1]` and at most
    /// `LATENCY_BUCKETS[i]`, the last those above every bound. Cumulative only when rendered.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Their latencies, added up.
    nanos: AtomicU64,
}

impl Counts {
    fn add(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        bump(&self.buckets[bucket], 1);
        bump(
            &self.nanos,
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        );
    }
}

/// Adds to a counter only this thread writes (wrapping: a thread's share of requests in flight
/// can go below zero, and the wrapped sum over threads is still the right count).
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

thread_local! {
    /// The series this thread has counted, with its counts of each.
    static MINE: RefCell<Vec<(Labels, &'static Counts)>> = const { RefCell::new(Vec::new()) };
    /// The routes this thread has seen, as labels: a lookup here takes no lock.
    static ROUTES_MINE: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    /// Requests that arrived on this thread less those that ended on it.
    static IN_FLIGHT_MINE: &'static AtomicU64 = {
        let mine: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        locked(&IN_FLIGHT_ALL).push(mine);
        mine
    };
}

/// Every thread's counts of every series, for scrapes. Threads, routes, methods and statuses are
/// small fixed sets, so the counts are kept for the life of the process (as a counter must be,
/// even after its thread ends).
static ALL: Mutex<Vec<(Labels, &'static Counts)>> = Mutex::new(Vec::new());

/// Every route seen, as a label: one copy of each, so that a label's address tells it apart.
static ROUTES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Every thread's count of requests in flight, likewise kept: a thread may end with requests
/// counted that end elsewhere.
static IN_FLIGHT_ALL: Mutex<Vec<&'static AtomicU64>> = Mutex::new(Vec::new());

/// One of the lists above, which every thread adds to. A thread that panicked while holding it
/// left it whole (each change is one push), so a poisoned lock is used as it is.
fn locked<T>(all: &Mutex<T>) -> MutexGuard<'_, T> {
    all.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts `by` more requests in flight (fewer when negative) on this thread.
pub fn in_flight_add(by: i64) {
    IN_FLIGHT_MINE.with(|mine| bump(mine, by as u64));
}

/// The requests in flight now, over every thread.
fn in_flight() -> i64 {
    let total = locked(&IN_FLIGHT_ALL).iter().fold(0u64, |total, mine| {
        total.wrapping_add(mine.load(Ordering::Relaxed))
    });
    total as i64
}

/// `route` as a label of a `'static` lifetime, so that a request in flight need not hold on to
/// its router's copy (an `Arc` that every core would count up and down). The same text always
/// gives the same label, at the same address, on every thread.
pub fn route_label(route: &str) -> &'static str {
    ROUTES_MINE.with_borrow_mut(|mine| {
        if let Some(known) = mine.iter().find(|known| **known == route) {
            return *known;
        }
        let mut routes = locked(&ROUTES);
        let label = match routes.iter().find(|known| **known == route) {
            Some(known) => *known,
            None => {
                let label: &'static str = Box::leak(route.into());
                routes.push(label);
                label
            }
        };
        mine.push(label);
        label
    })
}

/// Counts one answered request of `route`, `method` and `status` that took `elapsed`.
pub fn count(route: &'static str, method: &'static str, status: u16, elapsed: Duration) {
    let labels = Labels {
        route,
        method,
        status,
    };
    let counts = MINE.with_borrow_mut(|mine| {
        // Labels are told apart by address, not text: a route's label has one address
        // (`route_label`), as has each of `track`'s methods. A label of the same text at another
        // address only costs a second entry, which a scrape adds up with the first.
        let found = mine.iter().find(|(known, _)| {
            known.status == status
                && std::ptr::eq(known.method, method)
                && std::ptr::eq(known.route, route)
        });
        if let Some((_, counts)) = found {
            return *counts;
        }
        let counts: &'static Counts = Box::leak(Box::new(Counts {
            buckets: Default::default(),
            nanos: AtomicU64::new(0),
        }));
        mine.push((labels, counts));
        locked(&ALL).push((labels, counts));
        counts
    });
    counts.add(elapsed);
}

/// One series' counts, added up over every thread.
#[derive(Default)]
struct Totals {
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    nanos: u64,
}

impl Totals {
    fn requests(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Writes the series in Prometheus's text format, as the exporter writes its own: help and type
/// lines, one line per series (label sets in a stable order), a blank line after each. Those of
/// answered requests only once there is one, as the exporter would.
pub fn render(into: &mut String) {
    write_help_line(into, IN_FLIGHT, None, None, IN_FLIGHT_HELP);
    write_type_line(into, IN_FLIGHT, None, None, "gauge");
    let _ = writeln!(into, "{IN_FLIGHT} {}\n", in_flight());

    let mut totals = BTreeMap::<Labels, Totals>::new();
    for (labels, counts) in locked(&ALL).iter() {
        let total = totals.entry(*labels).or_default();
        for (total, count) in total.buckets.iter_mut().zip(&counts.buckets) {
            *total += count.load(Ordering::Relaxed);
        }
        total.nanos += counts.nanos.load(Ordering::Relaxed);
    }
    if totals.is_empty() {
        return;
    }

    write_help_line(into, REQUESTS, None, None, REQUESTS_HELP);
    write_type_line(into, REQUESTS, None, None, "counter");
    for (labels, total) in &totals {
        line(into, REQUESTS, labels, None, total.requests());
    }
    into.push('\n');

    write_help_line(into, DURATION, None, None, DURATION_HELP);
    write_type_line(into, DURATION, None, None, "histogram");
    let (bucket, sum, count) = (
        format!("{DURATION}_bucket"),
        format!("{DURATION}_sum"),
        format!("{DURATION}_count"),
    );
    for (labels, total) in &totals {
        let mut below = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&total.buckets) {
            below += count;
            line(into, &bucket, labels, Some(&bound.to_string()), below);
        }
        line(into, &bucket, labels, Some("+Inf"), total.requests());
        let seconds = total.nanos as f64 / 1e9;
        line(into, &sum, labels, None, seconds);
        line(into, &count, labels, None, total.requests());
    }
    into.push('\n');
}

/// One line: `name{route="…",method="…",status="…"[,le="…"]} value`.
fn line(into: &mut String, name: &str, labels: &Labels, le: Option<&str>, value: impl Display) {
    let route = sanitize_label_value(labels.route);
    let _ = write!(
        into,
        "{name}{{route=\"{route}\",method=\"{}\",status=\"{}\"",
        labels.method, labels.status
    );
    if let Some(le) = le {
        let _ = write!(into, ",le=\"{le}\"");
    }
    let _ = writeln!(into, "}} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .collect()
    }

    #[test]
    fn requests_counted_on_several_threads_add_up_in_one_series_with_cumulative_buckets() {
        // A route only this test counts: the counts are the process's, shared by every test.
        let route = route_label("/test/add-up");
        let take = Duration::from_micros;
        std::thread::scope(|threads| {
            threads.spawn(|| count(route, "GET", 200, take(300)));
            threads.spawn(|| {
                count(route_label("/test/add-up"), "GET", 200, take(700));
                count(route_label("/test/add-up"), "GET", 200, take(20_000_000));
                count(route_label("/test/add-up"), "GET", 503, take(100));
            });
        });

        let mut text = String::new();
        render(&mut text);

        let ok = "{route=\"/test/add-up\",method=\"GET\",status=\"200\"";
        assert_eq!(
            lines(&text, &format!("{REQUESTS}{ok}")),
            [format!("{REQUESTS}{ok}}} 3")]
        );
        let buckets = lines(&text, &format!("{DURATION}_bucket{ok}"));
        assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(
            buckets[0],
            format!("{DURATION}_bucket{ok},le=\"0.0005\"}} 1")
        );
        assert_eq!(
            buckets[1],
            format!("{DURATION}_bucket{ok},le=\"0.001\"}} 2")
        );
        assert_eq!(buckets[13], format!("{DURATION}_bucket{ok},le=\"10\"}} 2"));
        assert_eq!(
            buckets[14],
            format!("{DURATION}_bucket{ok},le=\"+Inf\"}} 3")
        );
        assert_eq!(
            lines(&text, &format!("{DURATION}_sum{ok}")),
            [format!("{DURATION}_sum{ok}}} 20.001")]
        );
        assert_eq!(
            lines(&text, &format!("{DURATION}_count{ok}")),
            [format!("{DURATION}_count{ok}}} 3")]
        );
        let failed = "{route=\"/test/add-up\",method=\"GET\",status=\"503\"}";
        assert_eq!(
            lines(&text, &format!("{REQUESTS}{failed}")),
            [format!("{REQUESTS}{failed} 1")]
        );
        assert_eq!(
            text.matches(&format!("# TYPE {DURATION} histogram"))
                .count(),
            1
        );
    }

    #[test]
    fn a_route_is_one_label_however_many_times_it_is_seen() {
        let route = String::from("/test/one-label");
        assert!(std::ptr::eq(
            route_label(&route),
            route_label("/test/one-label")
        ));
    }
}
