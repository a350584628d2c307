//! A RabbitMQ cluster losing a node under load: the local 3-node cluster of `scripts/cluster`,
//! quorum queues, two front-servers on different nodes, clients writing through one front-server
//! and reading back through the other. A test binary of its own that holds the broker lock
//! exclusively: it kills and stops nodes, and starves the machine's two cores while it does.

use kv_e2e::app::{Lock, lock_broker, rabbitmqctl};
use kv_e2e::system::{Front, System};
use kv_e2e::writers::{
    Attempt, Load, Writers, assert_none_slower_than, assert_reads_saw_their_writes, audit_values,
};
use kv_protocol::QueueType;
use std::process::Command;
use std::time::{Duration, Instant};

/// The front-servers' deadline (`RPC_TIMEOUT_MS`'s default): no request may outlive it by more
/// than 2 s.
const DEADLINE: Duration = Duration::from_secs(5);
/// How soon both front-servers must serve again after a node dies.
const RECOVERY: Duration = Duration::from_secs(10);

/// Runs `scripts/cluster` with `args` and returns what it printed; fails if it fails.
/// Runs a blocking command (`scripts/cluster`, `rabbitmqctl`, `kill`) on a thread of its own. On
/// the test's runtime it would stop the writers too, and the seconds a node takes to start would
/// count against the servers as the latency of the requests in flight.
async fn off_runtime<T: Send + 'static>(command: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(command)
        .await
        .unwrap_or_else(|failed| std::panic::resume_unwind(failed.into_panic()))
}

/// `run` (`cluster` or `rabbitmqctl`) with `args`, off the test's runtime (see [`off_runtime`]).
async fn run_off_runtime(run: fn(&[&str]) -> String, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    off_runtime(move || run(&args.iter().map(String::as_str).collect::<Vec<_>>())).await
}

fn cluster(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster");
    let output = Command::new(script)
        .args(args)
        .output()
        .expect("run scripts/cluster");
    assert!(
        output.status.success(),
        "scripts/cluster {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn node_name(node: u32) -> String {
    format!("kv{node}@localhost")
}

/// The cluster, started (or completed) if it is not running, and a system on it with quorum
/// queues and a back-server that may use any node.
async fn system_on_the_cluster() -> System {
    cluster(&["start"]);
    let urls = cluster(&["urls"]).trim().to_owned();
    System::new(&urls, 1, QueueType::Quorum)
}

/// The node (1..3) a front-server's log says it connected to last.
fn node_of(front: &Front) -> u32 {
    let log = front.process.log();
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("connected to RabbitMQ"))
        .expect("a connected front-server");
    (1..=3)
        .find(|node| line.contains(&format!("127.0.0.1:570{node}")))
        .unwrap_or_else(|| panic!("no cluster node in {line:?}"))
}

/// Starts a front-server that connected to a node `wanted` accepts. Servers pick their first
/// node at random (so that they spread over a cluster): start again until one lands well.
async fn front_on(system: &System, wanted: impl Fn(u32) -> bool) -> Front {
    for _ in 0..40 {
        let mut front = system.start_front(&[]).await;
        if wanted(node_of(&front)) {
            return front;
        }
        front.process.stop(Duration::from_secs(10)).await.unwrap();
    }
    panic!("no front-server landed on a wanted node in 40 starts");
}

/// The node that leads the quorum queue `queue`.
fn leader_of(queue: &str) -> u32 {
    let listing = rabbitmqctl(&[
        "-n",
        &node_name(1),
        "list_queues",
        "--quiet",
        "--no-table-headers",
        "name",
        "leader",
    ]);
    let line = listing
        .lines()
        .find(|line| line.split_whitespace().next() == Some(queue))
        .unwrap_or_else(|| panic!("no queue {queue} in:\n{listing}"));
    (1..=3)
        .find(|node| line.contains(&node_name(*node)))
        .unwrap_or_else(|| panic!("no leader in {line:?}"))
}

/// For each front-server, how long after `since` its first request that began after `since`
/// was answered `200`.
fn recovery_after(attempts: &[Attempt], since: Instant, fronts: usize) -> Vec<Option<Duration>> {
    (0..fronts)
        .map(|front| {
            attempts
                .iter()
                .filter(|attempt| attempt.front == front && attempt.acked())
                .filter(|attempt| attempt.finished - attempt.took >= since)
                .map(|attempt| attempt.finished - since)
                .min()
        })
        .collect()
}

fn load(fronts: &[&Front]) -> Writers {
    Writers::start_load(Load {
        prefix: "cluster",
        fronts: fronts.iter().map(|front| front.address.clone()).collect(),
        clients: 8,
        keys: 20,
        writes: usize::MAX,
        read_back: true,
        partition: None,
    })
}

/// Checks the run's outcome: nothing acknowledged lost, every read saw its write, and no request
/// outlived the deadline by more than 2 s.
async fn audit_run(system: &System, attempts: &[Attempt]) {
    let acked = audit_values(|| system.all_values(), attempts).await;
    let reads = assert_reads_saw_their_writes(attempts);
    assert_none_slower_than(attempts, DEADLINE + Duration::from_secs(2));
    let failed = attempts.len() - acked;
    eprintln!("{acked} writes acknowledged, {failed} failed; {reads} reads back");
}

#[tokio::test]
async fn killing_the_node_that_leads_the_queue_under_load_loses_no_acknowledged_write() {
    let _alone = lock_broker(Lock::Exclusive);
    let system = system_on_the_cluster().await;
    let _back = system.start_back(0, &[]).await;
    let leader = leader_of(system.layout.base());
    // One front-server on the node that will die, one on another.
    let doomed = front_on(&system, |node| node == leader).await;
    let survivor = front_on(&system, |node| node != leader).await;

    let writers = load(&[&doomed, &survivor]);
    writers.wait_for_acked(500).await;
    let pid = run_off_runtime(cluster, &["pid", &leader.to_string()]).await;
    let killed = Instant::now();
    let kill = pid.trim().to_owned();
    let status = off_runtime(move || Command::new("kill").args(["-9", &kill]).status())
        .await
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
    let acked = writers.acked();
    writers.wait_for_acked(acked + 1000).await;

    run_off_runtime(cluster, &["start-node", &leader.to_string()]).await;
    // Fails unless every node is running and in the cluster.
    run_off_runtime(cluster, &["status"]).await;
    let acked = writers.acked();
    writers.wait_for_acked(acked + 300).await;
    let attempts = writers.stop().await;

    let recovered = recovery_after(&attempts, killed, 2);
    eprintln!("after kill -9 of node {leader}: served again after {recovered:?}");
    for (front, took) in recovered.iter().enumerate() {
        assert!(
            took.is_some_and(|took| took <= RECOVERY),
            "front-server {front} served again only after {took:?}"
        );
    }
    assert_ne!(
        node_of(&doomed),
        leader,
        "the doomed front moved to another node"
    );
    audit_run(&system, &attempts).await;
}

#[tokio::test]
async fn stopping_each_node_in_turn_keeps_the_store_serving_and_loses_nothing() {
    let _alone = lock_broker(Lock::Exclusive);
    let system = system_on_the_cluster().await;
    let _back = system.start_back(0, &[]).await;
    let first = system.start_front(&[]).await;
    let second = front_on(&system, |node| node != node_of(&first)).await;

    let writers = load(&[&first, &second]);
    writers.wait_for_acked(300).await;
    let mut stops = Vec::new();
    for node in 1..=3 {
        let name = node_name(node);
        run_off_runtime(rabbitmqctl, &["-n", &name, "stop_app"]).await;
        stops.push(Instant::now());
        let acked = writers.acked();
        writers.wait_for_acked(acked + 300).await;
        run_off_runtime(rabbitmqctl, &["-n", &name, "start_app"]).await;
        run_off_runtime(cluster, &["start"]).await;
        let acked = writers.acked();
        writers.wait_for_acked(acked + 100).await;
    }
    let attempts = writers.stop().await;
    for (node, stopped) in (1..=3).zip(stops) {
        let recovered = recovery_after(&attempts, stopped, 2);
        eprintln!("after stop_app of node {node}: served again after {recovered:?}");
        for (front, took) in recovered.iter().enumerate() {
            assert!(
                took.is_some_and(|took| took <= RECOVERY),
                "front-server {front} served again only {took:?} after node {node} stopped"
            );
        }
    }
    audit_run(&system, &attempts).await;
}
