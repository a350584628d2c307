//! Entry point of `front-server`; hands off to the library.

use front_server::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = kv_protocol::parse_with_config_file()?;
    kv_protocol::init_tracing(&config.log);
    let application = Application::build(config).await?;
    application
        .run_until_stopped(kv_protocol::shutdown_signal())
        .await
}
