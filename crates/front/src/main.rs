//! Entry point of `front-server`; hands off to the library.

use front_server::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = kv_runtime::parse_with_config_file()?;
    kv_runtime::init_tracing(&config.log);
    let application = Application::build(config).await?;
    application
        .run_until_stopped(kv_runtime::shutdown_signal())
        .await
}
