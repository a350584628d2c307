//! `/metrics` pages read back: the metrics tests' and the benchmark's view of both servers.

use std::collections::HashMap;

/// One scrape of a `/metrics` page: every sample by series name and labels.
#[derive(Debug)]
pub struct Scrape {
    pub samples: Vec<(String, HashMap<String, String>, f64)>,
    pub text: String,
}

impl Scrape {
    /// Fetches `{base}/metrics`; panics unless it answers `200` with text.
    pub async fn of(client: &reqwest::Client, base: &str) -> Self {
        let response = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics is answered");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Self::parse(response.text().await.unwrap())
    }

    /// Prometheus's text format, as far as our series need: `name{k="v",…} value`.
    pub fn parse(text: String) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                    None => (series, HashMap::new()),
                };
                (name.to_owned(), labels, value)
            })
            .collect();
        Self { samples, text }
    }

    /// The sum of the samples named `name` that carry all of `labels` (0 if none does).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(sample, sample_labels, _)| {
                sample == name
                    && labels
                        .iter()
                        .all(|(k, v)| sample_labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| value)
            .sum()
    }
}

/// `k="v",k2="v2"`; our label values hold no quotes, commas or backslashes.
fn parse_labels(labels: &str) -> HashMap<String, String> {
    labels
        .split("\",")
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once("=\"").expect("a label is k=\"v\"");
            (key.to_owned(), value.trim_end_matches('"').to_owned())
        })
        .collect()
}
