//! A scaled-out system as an operator runs it: any number of front-servers and a back-server
//! (or several) per partition, each a real process, on partitioned queues of their own and a
//! database per partition. For the tests of partitions, standbys and clusters.

use crate::PATIENCE;
use crate::app::{db_values_at, eventually, unique_queue};
use crate::queues::delete_queues_now;
use crate::server::{ServerProcess, binaries};
use kv_protocol::{Layout, QueueType, dead_letter_queue, partition_of};
use std::collections::HashMap;
use std::path::PathBuf;

pub struct System {
    pub layout: Layout,
    /// The URL (or URL list) servers get unless a test gives one.
    pub amqp_url: String,
    /// A test's own settings for every server it starts, after the system's.
    pub env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    /// Counts reshards, which write new databases beside the old.
    generation: u32,
}

/// A running front-server and the address requests go to.
pub struct Front {
    pub process: ServerProcess,
    pub address: String,
}

impl System {
    /// A system of `partitions` partitions of type `queue_type` on queues no other test uses.
    /// Starts nothing.
    pub fn new(amqp_url: &str, partitions: u32, queue_type: QueueType) -> Self {
        Self {
            layout: Layout::new(unique_queue(), partitions, queue_type),
            amqp_url: amqp_url.to_owned(),
            env: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        }
    }

    /// The settings every server of this system gets, then the test's, then `extra`.
    fn settings(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut settings = vec![
            ("AMQP_URL".to_owned(), self.amqp_url.clone()),
            ("KV_QUEUE".to_owned(), self.layout.base().to_owned()),
            (
                "KV_PARTITIONS".to_owned(),
                self.layout.partitions().to_string(),
            ),
            (
                "KV_QUEUE_TYPE".to_owned(),
                self.layout.queue_type().to_string(),
            ),
        ];
        // Any free port: tests run side by side, and a default port may be taken.
        settings.push(("FRONT_LISTEN".to_owned(), "127.0.0.1:0".to_owned()));
        settings.push(("ADMIN_LISTEN".to_owned(), "127.0.0.1:0".to_owned()));
        settings.extend(self.env.iter().cloned());
        settings.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        settings
    }

    /// The database file of `partition`.
    pub fn db_path(&self, partition: u32) -> PathBuf {
        self.db_template(self.generation)
            .replace(PARTITION, &partition.to_string())
            .into()
    }

    fn db_template(&self, generation: u32) -> String {
        let dir = self.dir.path().to_str().expect("a UTF-8 temporary path");
        format!("{dir}/kv-g{generation}-{PARTITION}.db")
    }

    /// Runs `back-server reshard` to `partitions` with this system's settings; if it succeeds,
    /// the system has that many partitions from then on. Returns its exit status and output.
    pub async fn reshard(&mut self, partitions: u32) -> std::process::Output {
        let mut args = vec!["reshard".to_owned(), "--to".into(), partitions.to_string()];
        for partition in 0..self.layout.partitions() {
            args.push("--from".into());
            args.push(self.db_path(partition).to_str().unwrap().into());
        }
        args.push("--into".into());
        args.push(self.db_template(self.generation + 1));
        let output = tokio::process::Command::new(&binaries().await.back)
            .args(&args)
            .env_remove("CONFIG_FILE")
            .envs(self.settings(&[]))
            .output()
            .await
            .expect("run back-server reshard");
        if output.status.success() {
            self.generation += 1;
            self.layout = Layout::new(self.layout.base(), partitions, self.layout.queue_type());
        }
        output
    }

    /// Starts a front-server (`extra` adds or overrides settings) and waits until it serves.
    pub async fn start_front(&self, extra: &[(&str, &str)]) -> Front {
        let process = self.start_process("front-server", extra).await;
        let address = format!("http://{}", process.wait_for_address("listening").await);
        process.wait_for_log("ready: publishing to RabbitMQ").await;
        Front { process, address }
    }

    /// Starts a back-server for `partition` on its database and waits until it has subscribed
    /// to its queue (as the active consumer, or as a standby).
    pub async fn start_back(&self, partition: u32, extra: &[(&str, &str)]) -> ServerProcess {
        let partition_setting = partition.to_string();
        let db_path = self.db_path(partition);
        let mut settings = vec![
            ("KV_PARTITION", partition_setting.as_str()),
            ("DB_PATH", db_path.to_str().expect("a UTF-8 temporary path")),
        ];
        settings.extend_from_slice(extra);
        let process = self.start_process("back-server", &settings).await;
        process.wait_for_log("consuming").await;
        process
    }

    /// Starts `binary` with this system's settings and `extra`, without waiting for anything.
    pub async fn start_process(
        &self,
        binary: &'static str,
        extra: &[(&str, &str)],
    ) -> ServerProcess {
        let binaries = binaries().await;
        let path = match binary {
            "front-server" => &binaries.front,
            "back-server" => &binaries.back,
            other => panic!("no binary {other}"),
        };
        let settings = self.settings(extra);
        let settings: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ServerProcess::start(binary, path, &settings)
    }

    /// Every key and value in `partition`'s database.
    pub fn db_values(&self, partition: u32) -> HashMap<String, f64> {
        let path = self.db_path(partition);
        if !path.exists() {
            return HashMap::new();
        }
        db_values_at(&path)
    }

    /// Every key and value in every partition's database; fails if a key is in two of them or
    /// in a partition that is not its own.
    pub fn all_values(&self) -> HashMap<String, f64> {
        let mut all = HashMap::new();
        for partition in 0..self.layout.partitions() {
            for (key, value) in self.db_values(partition) {
                let home = partition_of(&key, self.layout.partitions());
                assert_eq!(
                    home, partition,
                    "key {key:?} is in partition {partition}'s database, not its own ({home})"
                );
                assert!(
                    all.insert(key.clone(), value).is_none(),
                    "key {key:?} twice"
                );
            }
        }
        all
    }

    /// Waits until `key` holds `value` in its partition's database.
    pub async fn wait_for_db_value(&self, key: &str, value: f64) {
        let partition = partition_of(key, self.layout.partitions());
        eventually(&format!("{key} becomes {value}"), || async {
            match self.db_values(partition).get(key) {
                Some(held) if *held == value => Ok(()),
                other => Err(format!("holds {other:?}")),
            }
        })
        .await
    }

    /// Every queue of the system: each partition's and its dead letters'.
    pub fn queues(&self) -> Vec<String> {
        self.layout
            .queues()
            .flat_map(|queue| [dead_letter_queue(&queue), queue])
            .collect()
    }
}

impl Drop for System {
    /// Runs on success and on panic alike, so no test leaves queues behind.
    fn drop(&mut self) {
        for url in self.amqp_url.split(',') {
            delete_queues_now(url, self.queues());
        }
    }
}

/// What `back-server reshard --into` replaces with a partition's number.
const PARTITION: &str = "{partition}";

/// `n` keys, named after `prefix`, that all fall in `partition` of `partitions`.
pub fn keys_in(prefix: &str, partition: u32, partitions: u32, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|key| partition_of(key, partitions) == partition)
        .take(n)
        .collect()
}

/// One POST, and its status and body.
pub async fn post(client: &reqwest::Client, address: &str, key: &str, value: f64) -> (u16, String) {
    let response = client
        .post(format!("{address}/api"))
        .header("Content-Type", "application/json")
        .body(serde_json::json!({ key: value }).to_string())
        .timeout(PATIENCE)
        .send()
        .await
        .expect("POST is answered");
    (response.status().as_u16(), response.text().await.unwrap())
}

/// One GET, and its status and body.
pub async fn get(client: &reqwest::Client, address: &str, key: &str) -> (u16, serde_json::Value) {
    let response = client
        .get(crate::app::key_url(address, key))
        .timeout(PATIENCE)
        .send()
        .await
        .expect("GET is answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}
