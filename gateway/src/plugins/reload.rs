//! Hot reload: each gateway instance keeps one dedicated control-plane
//! connection that `LISTEN`s on [`NOTIFY_CHANNEL`]. Activations and
//! deactivations `pg_notify` in the same transaction, so every instance drops
//! its cached entry within a round trip and loads the new version on the next
//! call. After a (re)connect the whole cache is dropped, since notifications
//! may have been missed. Reconnects back off up to 2 s.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use super::registry::NOTIFY_CHANNEL;
use super::{PluginKind, Plugins};
use crate::ids::TenantId;
use crate::secret::{ExposeSecret, SecretString};

/// Listen until `shutdown` turns true.
pub async fn listen(plugins: Plugins, database_url: SecretString, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            r = listen_once(&plugins, &database_url) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "plugin activation listener lost its connection; reconnecting");
                }
            }
            _ = shutdown.wait_for(|v| *v) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn listen_once(plugins: &Plugins, database_url: &SecretString) -> Result<(), tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = match database_url.expose_secret().parse() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "control.database_url does not parse; plugin hot reload is off");
            std::future::pending::<()>().await;
            return Ok(());
        }
    };
    cfg.application_name("sluice-plugin-listener");
    cfg.connect_timeout(Duration::from_secs(5));
    let (client, mut conn) = cfg.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await?;
    plugins.invalidate_all();
    tracing::debug!("plugin activation listener connected");
    while let Some(payload) = rx.recv().await {
        match parse(&payload) {
            Some((tenant, kind)) => plugins.invalidate(tenant, kind),
            None => plugins.invalidate_all(),
        }
    }
    match driver.await {
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// `tenant_uuid:kind`.
fn parse(payload: &str) -> Option<(TenantId, PluginKind)> {
    let (t, k) = payload.split_once(':')?;
    Some((TenantId(t.parse().ok()?), PluginKind::parse(k)?))
}
