//! `back-server reshard`: changes the number of partitions, the one change of layout that moves
//! keys. Each key's partition is its hash modulo the count, so a new count sends most keys to
//! another partition: their rows must move to the new partition's database, and the queues must
//! be replaced, while nothing is in flight.
//!
//! The operator stops the front-servers, lets the back-servers drain their queues, stops them,
//! then runs this with the current settings (`KV_PARTITIONS` the current count). It:
//!
//! 1. checks that the queues were made for the current count, that every request queue is empty
//!    with no consumer, and that no dead letters wait (they name keys of the old layout);
//! 2. writes every row of the current databases into new databases, one per new partition,
//!    each committed and synced before the queues are touched; a key found in two databases
//!    stops it;
//! 3. deletes the old queues (only if still empty and unused) and declares the new ones.
//!
//! The old database files are left as they were: they are the way back until the new layout is
//! known to work.

use crate::store::open_connection;
use anyhow::{Context, bail, ensure};
use kv_protocol::{
    Layout, QueueType, dead_letter_queue, declare_topology, existing_partitions, partition_of,
};
use kv_runtime::AmqpSettings;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::path::{Path, PathBuf};

/// Settings of `back-server reshard`; the AMQP settings (`KV_PARTITIONS` the current count) come
/// from the server's own.
#[derive(Debug, Clone, clap::Args)]
pub struct ReshardArgs {
    /// The new number of partitions.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub to: u32,

    /// The database of each current partition, in partition order (0 first): as many as
    /// KV_PARTITIONS.
    #[arg(long = "from", value_name = "FILE", required = true)]
    pub from: Vec<PathBuf>,

    /// Where to create the new partitions' databases: a path in which `{partition}` stands for
    /// the partition's number, e.g. `data/kv-{partition}.db`. The files must not exist yet.
    #[arg(long, value_name = "TEMPLATE")]
    pub into: String,
}

const PLACEHOLDER: &str = "{partition}";

/// Runs the reshard; see the module docs. Prints what it did, and what to start next.
pub async fn run(amqp: &AmqpSettings, args: &ReshardArgs) -> anyhow::Result<()> {
    let old = amqp.layout();
    let new = Layout::new(old.base(), args.to, old.queue_type());
    ensure!(
        args.to != old.partitions(),
        "the store already has {} partition(s)",
        args.to
    );
    ensure!(
        args.from.len() == old.partitions() as usize,
        "KV_PARTITIONS is {} but {} database(s) were given with --from: give each current \
         partition's database, in partition order",
        old.partitions(),
        args.from.len()
    );
    ensure!(
        args.into.contains(PLACEHOLDER),
        "--into must contain {PLACEHOLDER}, which stands for each new partition's number"
    );
    let targets: Vec<PathBuf> = (0..args.to)
        .map(|partition| {
            args.into
                .replace(PLACEHOLDER, &partition.to_string())
                .into()
        })
        .collect();
    if let Some(missing) = args.from.iter().find(|path| !path.exists()) {
        bail!("no database at {}", missing.display());
    }
    if let Some(taken) = targets.iter().find(|path| path.exists()) {
        bail!(
            "{} already exists: reshard creates the new databases itself",
            taken.display()
        );
    }

    let connection = connect(amqp).await?;
    check_drained(&connection, &old).await?;
    let sources = args.from.clone();
    let written = targets.clone();
    let moved = tokio::task::spawn_blocking(move || move_rows(&sources, &written))
        .await
        .context("the copying thread panicked")?;
    let moved = match moved {
        Ok(moved) => moved,
        Err(err) => {
            // Half-written databases would stop the next try; the old ones are untouched.
            for path in &targets {
                remove_database(path);
            }
            return Err(err);
        }
    };
    replace_queues(&connection, &old, &new).await?;
    let _ = connection.close(200, "reshard done".into()).await;

    println!(
        "Resharded '{}' from {} to {} partition(s); the old databases are unchanged.",
        old.base(),
        old.partitions(),
        new.partitions()
    );
    for (partition, (path, rows)) in targets.iter().zip(&moved).enumerate() {
        println!(
            "  partition {partition}: {rows} row(s) in {} (queue {})",
            path.display(),
            new.queue(partition as u32)
        );
    }
    println!(
        "Now start one back-server per partition with KV_PARTITIONS={n}, KV_PARTITION=<i> and \
         DB_PATH=<its file>, then the front-servers with KV_PARTITIONS={n}.",
        n = new.partitions()
    );
    Ok(())
}

/// Connects to the first node that answers.
async fn connect(amqp: &AmqpSettings) -> anyhow::Result<Connection> {
    let mut errors = Vec::new();
    let nodes = amqp.nodes()?;
    for (node, uri) in nodes.uris.iter().enumerate() {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("back-server reshard ({})", amqp.queue).into());
        match nodes.connect(node, properties).await {
            Ok(connection) => return Ok(connection),
            Err(err) => errors.push(format!(
                "{}:{}: {err}",
                uri.authority.host, uri.authority.port
            )),
        }
    }
    bail!("cannot connect to RabbitMQ: {}", errors.join("; "))
}

/// Checks that the queues fit `old` and that nothing is in them or consumes them.
async fn check_drained(connection: &Connection, old: &Layout) -> anyhow::Result<()> {
    match existing_partitions(connection, old.base()).await? {
        Some(found) if found != old.partitions() => bail!(
            "the queues of '{}' were created for {found} partition(s), but KV_PARTITIONS is {}: \
             run reshard with KV_PARTITIONS={found}",
            old.base(),
            old.partitions()
        ),
        Some(_) => {}
        None => return Ok(()),
    }
    for queue in old.queues() {
        let (messages, consumers) = inspect(connection, &queue).await?;
        ensure!(
            consumers == 0,
            "{consumers} consumer(s) still use queue '{queue}': stop its back-servers first"
        );
        ensure!(
            messages == 0,
            "{messages} message(s) wait in queue '{queue}': stop the front-servers and let its \
             back-server drain it first"
        );
        let dead = dead_letter_queue(&queue);
        let (dead_letters, _) = inspect(connection, &dead).await?;
        ensure!(
            dead_letters == 0,
            "{dead_letters} dead letter(s) wait in '{dead}': they belong to the old layout; \
             inspect them and delete or move them first"
        );
    }
    Ok(())
}

/// How many messages wait in `queue`, and how many consumers it has.
async fn inspect(connection: &Connection, queue: &str) -> anyhow::Result<(u32, u32)> {
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("look at queue '{queue}'"))?;
    let _ = channel.close(200, "inspected".into()).await;
    Ok((declared.message_count(), declared.consumer_count()))
}

/// Copies every row of `sources` into `targets`, each row into the database of its key's new
/// partition; returns how many rows each target got. Commits only if every row found its place.
fn move_rows(sources: &[PathBuf], targets: &[PathBuf]) -> anyhow::Result<Vec<u64>> {
    let mut connections = targets
        .iter()
        .map(|path| {
            open_connection(path).with_context(|| format!("create the database {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let transactions = connections
        .iter_mut()
        .map(|connection| connection.transaction())
        .collect::<Result<Vec<_>, _>>()?;
    let mut moved = vec![0u64; targets.len()];
    for source in sources {
        let reader = rusqlite::Connection::open(source)
            .with_context(|| format!("open the database {}", source.display()))?;
        let mut rows = reader.prepare("SELECT key, value FROM kv ORDER BY id")?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            let value: f64 = row.get(1)?;
            let partition = partition_of(&key, targets.len() as u32) as usize;
            let inserted = transactions[partition]
                .prepare_cached("INSERT INTO kv (key, value) VALUES (?1, ?2)")?
                .execute(rusqlite::params![key, value]);
            match inserted {
                Ok(_) => moved[partition] += 1,
                Err(rusqlite::Error::SqliteFailure(err, _))
                    if err.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    bail!(
                        "key '{key}' is in two of the databases given (again in {})",
                        source.display()
                    )
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
    for transaction in transactions {
        transaction.commit()?;
    }
    Ok(moved)
}

/// Removes a database file that reshard made, with its WAL and shared-memory files.
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// Deletes the queues of `old`, each only if it is still empty and unused, and declares those
/// of `new`. Classic queues check that atomically with the delete; quorum queues do not support
/// those flags, so for them the check comes just before (the front-servers are stopped: nothing
/// should arrive).
async fn replace_queues(connection: &Connection, old: &Layout, new: &Layout) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let only_if_idle = QueueDeleteOptions {
        if_empty: old.queue_type() == QueueType::Classic,
        if_unused: old.queue_type() == QueueType::Classic,
        ..QueueDeleteOptions::default()
    };
    for queue in old.queues() {
        for name in [dead_letter_queue(&queue), queue.clone()] {
            let (messages, consumers) = inspect(connection, &name).await?;
            let deleted = if messages == 0 && consumers == 0 {
                channel
                    .queue_delete(name.as_str().into(), only_if_idle)
                    .await
                    .map(drop)
                    .map_err(anyhow::Error::from)
            } else {
                Err(anyhow::anyhow!(
                    "{messages} message(s), {consumers} consumer(s)"
                ))
            };
            deleted.with_context(|| {
                format!(
                    "delete queue '{name}': a message or a consumer came since the check. The new \
                     databases are written and the old ones unchanged: stop what uses the queue, \
                     remove the new databases and run reshard again"
                )
            })?;
        }
    }
    let _ = channel.close(200, "old queues deleted".into()).await;
    declare_topology(connection, new)
        .await
        .context("declare the new queues")?;
    Ok(())
}
