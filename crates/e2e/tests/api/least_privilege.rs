//! `scripts/broker-users` on the real broker: the whole system works with its two users, and the
//! broker itself refuses each user what it was not given. Each test makes a vhost and users of
//! its own, with random names, and deletes them at the end, so it shares the broker with the rest.

use kv_e2e::app::{amqp_url, rabbitmqctl, unique_queue};
use kv_e2e::system::{System, get, keys_in, post};
use kv_protocol::{QueueType, dead_letter_queue};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind};
use std::path::Path;

/// A vhost and two users made by the script, deleted (with everything in the vhost) on drop.
struct BrokerUsers {
    vhost: String,
    front_user: String,
    back_user: String,
    front_password: String,
    back_password: String,
    /// Holds the back-server's password file, as a Docker or Kubernetes secret would.
    dir: tempfile::TempDir,
    host: String,
    port: u16,
}

impl BrokerUsers {
    /// Runs `scripts/broker-users` for a vhost and users of this test's own, on `queue`.
    fn create(queue: &str) -> Self {
        let id = unique_queue().replace("kv.test.", "").replace('.', "-");
        let broker: AMQPUri = amqp_url()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .expect("AMQP_URL parses");
        let users = Self {
            vhost: format!("kv-test-{id}"),
            front_user: format!("kv-test-front-{id}"),
            back_user: format!("kv-test-back-{id}"),
            front_password: format!("fr0nt secret {id}:@/%"),
            back_password: format!("b4ck-secret-{id}"),
            dir: tempfile::tempdir().unwrap(),
            host: broker.authority.host,
            port: broker.authority.port,
        };
        std::fs::write(
            users.back_password_file(),
            format!("{}\n", users.back_password),
        )
        .unwrap();
        // Twice: the second run finds everything in place and must still succeed.
        users.run_script(queue);
        users.run_script(queue);
        users
    }

    fn run_script(&self, queue: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/broker-users");
        let output = std::process::Command::new(script)
            .env("KV_VHOST", &self.vhost)
            .env("KV_QUEUE", queue)
            .env("KV_FRONT_USER", &self.front_user)
            .env("KV_BACK_USER", &self.back_user)
            .env("KV_FRONT_PASSWORD", &self.front_password)
            .env("KV_BACK_PASSWORD_FILE", self.back_password_file())
            .output()
            .expect("run scripts/broker-users");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "scripts/broker-users: {stderr}");
        assert!(!stderr.contains(&self.front_password), "{stderr}");
        assert!(!stderr.contains(&self.back_password), "{stderr}");
    }

    fn back_password_file(&self) -> String {
        self.dir
            .path()
            .join("back-password")
            .to_str()
            .unwrap()
            .into()
    }

    /// `user`'s URL without a password, on this test's vhost (or on `vhost`).
    fn url(&self, user: &str, vhost: &str) -> String {
        format!("amqp://{user}@{}:{}/{vhost}", self.host, self.port)
    }

    /// The front-server's URL, its password written in it (percent-encoded).
    fn front_url(&self) -> String {
        let password: String =
            form_urlencoded::byte_serialize(self.front_password.as_bytes()).collect();
        self.url(&self.front_user, &self.vhost).replacen(
            '@',
            &format!(":{}@", password.replace('+', "%20")),
            1,
        )
    }

    async fn connect_front(&self) -> Connection {
        Connection::connect(&self.front_url(), ConnectionProperties::default())
            .await
            .expect("the front-server's user connects to its vhost")
    }

    async fn connect_back(&self) -> Connection {
        let mut uri: AMQPUri = self.url(&self.back_user, &self.vhost).parse().unwrap();
        uri.authority.userinfo.password = self.back_password.clone();
        Connection::connect_uri(uri, ConnectionProperties::default())
            .await
            .expect("the back-server's user connects to its vhost")
    }
}

impl Drop for BrokerUsers {
    fn drop(&mut self) {
        for args in [
            ["delete_vhost", self.vhost.as_str()],
            ["delete_user", self.front_user.as_str()],
            ["delete_user", self.back_user.as_str()],
        ] {
            let _ = std::process::Command::new("rabbitmqctl")
                .arg("-q")
                .args(args)
                .output();
        }
    }
}

/// Asserts that `result` is RabbitMQ's ACCESS_REFUSED (which closes the channel).
fn assert_refused<T: std::fmt::Debug>(what: &str, result: lapin::Result<T>) {
    match result {
        Err(err) => match err.kind() {
            ErrorKind::ProtocolError(amqp)
                if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) =>
            {
                eprintln!("{what}: refused: {}", amqp.get_message())
            }
            _ => panic!("{what}: expected ACCESS_REFUSED, got {err}"),
        },
        Ok(done) => panic!("{what}: expected ACCESS_REFUSED, it was allowed: {done:?}"),
    }
}

async fn channel(connection: &Connection) -> Channel {
    connection.create_channel().await.unwrap()
}

async fn consume(channel: &Channel, queue: &str) -> lapin::Result<lapin::Consumer> {
    channel
        .basic_consume(
            queue.into(),
            "least-privilege-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn purge(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
}

async fn declare(channel: &Channel, queue: &str, passive: bool) -> lapin::Result<lapin::Queue> {
    let options = QueueDeclareOptions {
        passive,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
}

#[tokio::test]
async fn the_system_runs_with_the_scripts_users_and_the_broker_refuses_them_the_rest() {
    let queue = unique_queue();
    // Dropped after the system (its servers and queues), last of all.
    let users = BrokerUsers::create(&queue);
    let mut system = System::new(&users.front_url(), 2, QueueType::Classic);
    system.layout = kv_protocol::Layout::new(queue.clone(), 2, QueueType::Classic);
    let back_url = users.url(&users.back_user, &users.vhost);
    let back_env = [
        ("AMQP_URL", back_url.as_str()),
        ("AMQP_PASSWORD_FILE", &users.back_password_file()),
    ];
    let mut backs = Vec::new();
    for partition in 0..2 {
        let back = system.start_back(partition, &back_env).await;
        assert!(!back.log().contains(&users.back_password), "{}", back.log());
        backs.push(back);
    }
    let front = system.start_front(&[]).await;

    // The whole system works: writes and reads on both partitions, and a miss.
    let client = reqwest::Client::new();
    for partition in 0..2 {
        let key = &keys_in("least-privilege-", partition, 2, 1)[0];
        let value = 20.5 + f64::from(partition);
        assert_eq!(post(&client, &front.address, key, value).await.0, 200);
        let (status, body) = get(&client, &front.address, key).await;
        assert_eq!((status, &body["data"]), (200, &serde_json::json!(value)));
    }
    assert_eq!(get(&client, &front.address, "never-written").await.0, 404);
    for log in [front.process.log(), backs[0].log(), backs[1].log()] {
        assert!(!log.contains(&users.front_password), "{log}");
        assert!(!log.contains(&users.back_password), "{log}");
    }

    let request_queue = format!("{queue}.0");
    let dead_queue = dead_letter_queue(&request_queue);

    // The front-server's user may not take requests off a queue, nor empty it.
    let front_user = users.connect_front().await;
    assert_refused(
        "the front's user consumes a request queue",
        consume(&channel(&front_user).await, &request_queue).await,
    );
    assert_refused(
        "the front's user gets from a request queue",
        channel(&front_user)
            .await
            .basic_get(request_queue.as_str().into(), BasicGetOptions::default())
            .await,
    );
    assert_refused(
        "the front's user purges a request queue",
        purge(&channel(&front_user).await, &request_queue).await,
    );
    assert_refused(
        "the front's user reads the dead letters",
        consume(&channel(&front_user).await, &dead_queue).await,
    );
    assert_refused(
        "the front's user declares a queue of another name",
        declare(&channel(&front_user).await, "kv.somewhere.else", false).await,
    );

    // It may publish to the request queue, as the front-server does: a message the back-server
    // cannot parse is then moved to the dead letters, by the back-server's user. A passive
    // declare (the layout check) needs no permission at all, so the front's user can count them.
    let publisher = channel(&front_user).await;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = publisher
        .basic_publish(
            "".into(),
            request_queue.as_str().into(),
            BasicPublishOptions::default(),
            b"not a request",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    kv_e2e::app::eventually("the unparseable message is dead-lettered", || async {
        let counted = declare(&channel(&front_user).await, &dead_queue, true).await;
        match counted.map(|queue| queue.message_count()) {
            Ok(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The back-server's user consumes its request queues only: not the dead letters.
    let back_user = users.connect_back().await;
    assert_refused(
        "the back's user consumes the dead letters",
        consume(&channel(&back_user).await, &dead_queue).await,
    );
    assert_refused(
        "the back's user purges the dead letters",
        purge(&channel(&back_user).await, &dead_queue).await,
    );
    assert_refused(
        "the back's user declares a queue of another name",
        declare(&channel(&back_user).await, "kv.somewhere.else", false).await,
    );
    // Writes go through the default exchange only.
    let topic = channel(&back_user).await;
    topic
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let published = match topic
        .basic_publish(
            "amq.topic".into(),
            "anything".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
    {
        Ok(confirm) => confirm.await.map(|_| ()),
        Err(err) => Err(err),
    };
    assert_refused("the back's user publishes to amq.topic", published);

    // Neither user reaches another vhost, such as the broker's default one.
    for (user, password) in [
        (&users.front_user, &users.front_password),
        (&users.back_user, &users.back_password),
    ] {
        let mut uri: AMQPUri = users.url(user, "%2f").parse().unwrap();
        uri.authority.userinfo.password = password.clone();
        let refused = Connection::connect_uri(uri, ConnectionProperties::default()).await;
        let err = refused.expect_err("a user of the script opens vhost /");
        assert!(
            err.to_string().contains("NOT_ALLOWED"),
            "{user} on vhost /: {err}"
        );
    }

    // The queues of the layout are those the script's permissions name; the vhost holds them.
    let listed = rabbitmqctl(&["-q", "list_queues", "-p", &users.vhost, "name"]);
    for queue in system.queues() {
        assert!(listed.lines().any(|line| line == queue), "{listed}");
    }
    drop(front_user);
    drop(back_user);
}
