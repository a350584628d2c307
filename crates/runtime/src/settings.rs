//! Settings shared by both servers, and the one loader that layers them: command-line flag, then
//! environment variable, then the optional YAML config file, then the built-in default.

use anyhow::{Context, bail};
use clap::Parser;
use kv_protocol::{Layout, QueueType};
use std::ffi::OsString;
use std::path::PathBuf;
use yaml_rust2::{Yaml, YamlLoader};

/// RabbitMQ on this machine with its stock account: what every program here connects to by default.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How to reach RabbitMQ and which queue carries the requests.
#[derive(Debug, Clone, clap::Args)]
pub struct AmqpSettings {
    /// RabbitMQ URL: amqp://user:password@host:port/vhost, or amqps://... for TLS (the password is
    /// never logged). For a cluster, the URLs of its nodes separated by commas: the server connects
    /// to one and moves to the next when it fails.
    #[arg(
        long,
        env = "AMQP_URL",
        value_name = "URL",
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// File holding the RabbitMQ password (a Docker or Kubernetes secret), so that AMQP_URL need
    /// not carry it: its content, less one trailing newline, is the password of every URL in
    /// AMQP_URL, and wins over a password written in a URL. Taken as is, not percent-encoded.
    #[arg(long, env = "AMQP_PASSWORD_FILE", value_name = "PATH")]
    pub amqp_password_file: Option<PathBuf>,

    /// PEM file of the certificate authorities that may sign RabbitMQ's certificate, for
    /// `amqps://` URLs, trusted besides the system's roots. Checked at start.
    #[arg(long, env = "AMQP_CA_FILE", value_name = "PATH")]
    pub amqp_ca_file: Option<PathBuf>,

    /// PEM file of this server's client certificate (and its chain), for `amqps://` URLs to a
    /// RabbitMQ that asks for one. Needs AMQP_KEY_FILE.
    #[arg(long, env = "AMQP_CERT_FILE", value_name = "PATH")]
    pub amqp_cert_file: Option<PathBuf>,

    /// PEM file of the private key of AMQP_CERT_FILE. Needs AMQP_CERT_FILE.
    #[arg(long, env = "AMQP_KEY_FILE", value_name = "PATH")]
    pub amqp_key_file: Option<PathBuf>,

    /// Durable queue that carries writes and reads; `<KV_QUEUE>.dead` keeps unparseable messages.
    #[arg(
        long = "queue",
        env = "KV_QUEUE",
        value_name = "NAME",
        default_value = "kv.requests"
    )]
    pub queue: String,

    /// Type of the request queues: `quorum` (replicated over a cluster's nodes) or `classic`.
    /// Every server of one store must use the same.
    #[arg(
        long,
        env = "KV_QUEUE_TYPE",
        value_name = "TYPE",
        default_value = DEFAULT_QUEUE_TYPE.as_str(),
        value_parser = clap::builder::ValueParser::new(str::parse::<QueueType>)
    )]
    pub queue_type: QueueType,

    /// Number of partitions the keys are split over: with more than one, partition i's queue is
    /// `<KV_QUEUE>.<i>`. Every server of one store must use the same.
    #[arg(long, env = "KV_PARTITIONS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=MAX_PARTITIONS))]
    pub partitions: u32,
}

/// The queue type unless `KV_QUEUE_TYPE` says otherwise. On one node a quorum queue replicates
/// nothing and costs reads more; and a store made before queue types were a setting has classic
/// queues, which a quorum default would refuse. The README's "Scaling out" gives the figures.
pub const DEFAULT_QUEUE_TYPE: QueueType = QueueType::Classic;

/// More partitions than this is more queues than one cluster serves well, and more likely a typo.
const MAX_PARTITIONS: i64 = 1024;

#[cfg(test)]
impl AmqpSettings {
    /// Settings with `url` and every other setting at its default, for the crate's tests.
    pub(crate) fn for_url(url: &str) -> Self {
        Self {
            amqp_url: url.into(),
            amqp_password_file: None,
            amqp_ca_file: None,
            amqp_cert_file: None,
            amqp_key_file: None,
            queue: "kv.requests".into(),
            queue_type: DEFAULT_QUEUE_TYPE,
            partitions: 1,
        }
    }
}

impl AmqpSettings {
    /// The request queues these settings name.
    pub fn layout(&self) -> Layout {
        Layout::new(self.queue.clone(), self.partitions, self.queue_type)
    }
}

/// Parses a server's settings from the process's arguments and environment, and from the YAML
/// file named by its `config` setting (`--config` / `CONFIG_FILE`) if there is one.
///
/// The file is a flat mapping whose keys are setting names, written like the flag
/// (`rpc-timeout-ms`), the field (`rpc_timeout_ms`) or the environment variable
/// (`RPC_TIMEOUT_MS`). Its values become the defaults, so flags and variables still win.
/// `--help` and argument errors exit the process as clap does.
pub fn parse_with_config_file<T: Parser>() -> anyhow::Result<T> {
    parse_from(std::env::args_os().collect())
}

fn parse_from<T: Parser>(args: Vec<OsString>) -> anyhow::Result<T> {
    let mut command = T::command();
    // A first pass only to find the config file; errors and --help are left to the real pass.
    let config_file = command
        .clone()
        .try_get_matches_from(&args)
        .ok()
        .and_then(|matches| matches.get_one::<PathBuf>("config").cloned());
    if let Some(path) = config_file {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read config file {}", path.display()))?;
        for (name, value) in
            read_settings(&text).with_context(|| format!("parse config file {}", path.display()))?
        {
            let id = find_setting(&command, &name)
                .with_context(|| format!("config file {}", path.display()))?;
            command = command.mut_arg(id, |arg| arg.default_value(value));
        }
    }
    let matches = command.get_matches_from(args);
    Ok(T::from_arg_matches(&matches).unwrap_or_else(|err| err.exit()))
}

/// Reads a flat YAML mapping of scalars into (name, value) pairs.
fn read_settings(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let docs = YamlLoader::load_from_str(text)?;
    let Some(doc) = docs.into_iter().next() else {
        return Ok(Vec::new());
    };
    let Yaml::Hash(map) = doc else {
        bail!("expected a mapping of setting names to values");
    };
    map.into_iter()
        .map(|(name, value)| {
            let Yaml::String(name) = name else {
                bail!("setting names must be strings, found {name:?}");
            };
            let value = match value {
                Yaml::String(s) | Yaml::Real(s) => s,
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                other => bail!("setting '{name}' must be a single value, found {other:?}"),
            };
            Ok((name, value))
        })
        .collect()
}

fn find_setting(command: &clap::Command, name: &str) -> anyhow::Result<String> {
    let wanted = name.replace('-', "_").to_lowercase();
    command
        .get_arguments()
        .find(|arg| {
            arg.get_id().as_str() == wanted
                || arg
                    .get_long()
                    .is_some_and(|long| long.replace('-', "_") == wanted)
                || arg
                    .get_env()
                    .is_some_and(|env| env.eq_ignore_ascii_case(name))
        })
        .map(|arg| arg.get_id().to_string())
        .with_context(|| format!("unknown setting '{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Debug, Parser)]
    struct Settings {
        #[arg(long, env = "KV_TEST_CONFIG_FILE")]
        config: Option<PathBuf>,
        #[arg(long = "queue", env = "KV_TEST_QUEUE", default_value = "kv.requests")]
        queue_name: String,
        #[arg(long, env = "KV_TEST_TIMEOUT_MS", default_value_t = 5000)]
        timeout_ms: u64,
    }

    fn parse(args: &[&str]) -> anyhow::Result<Settings> {
        parse_from(args.iter().map(OsString::from).collect())
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let settings = parse(&["prog"]).unwrap();
        assert_eq!(settings.timeout_ms, 5000);
        assert_eq!(settings.queue_name, "kv.requests");
    }

    #[test]
    fn the_file_overrides_defaults_under_any_spelling_of_a_name() {
        let file = config_file("timeout-ms: 250\nKV_TEST_QUEUE: from.file\n");
        let path = file.path().to_str().unwrap();
        let settings = parse(&["prog", "--config", path]).unwrap();
        assert_eq!(settings.timeout_ms, 250);
        assert_eq!(settings.queue_name, "from.file");
    }

    #[test]
    fn flags_override_the_file() {
        let file = config_file("timeout_ms: 250\n");
        let path = file.path().to_str().unwrap();
        let settings = parse(&["prog", "--config", path, "--timeout-ms", "7"]).unwrap();
        assert_eq!(settings.timeout_ms, 7);
    }

    #[test]
    fn an_unknown_setting_is_an_error_that_names_it() {
        let file = config_file("timeout_ms: 250\nno_such_thing: 1\n");
        let path = file.path().to_str().unwrap();
        let err = parse(&["prog", "--config", path]).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown setting 'no_such_thing'"),
            "{err:#}"
        );
    }

    #[test]
    fn a_missing_file_is_an_error_that_names_it() {
        let err = parse(&["prog", "--config", "/nonexistent/kv.yaml"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/kv.yaml"),
            "{err:#}"
        );
    }
}
