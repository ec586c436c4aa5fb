//! The invalidation bus between nodes: Redis pub/sub on one channel. Each node publishes what it
//! changed (`<node id>|<event>`) and applies what the others published; its own echo is skipped. A
//! node that loses its subscription resubscribes (every second until it can) and is told so, since it
//! may have missed events: the store poll that every node runs anyway catches those up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::redis::Redis;

/// What the bus hands the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Another node's event.
    Event(String),
    /// The subscription was (re)established: events may have been missed before this.
    Resubscribed,
}

/// Forwards `outgoing` (this node's events, encoded) to the other nodes and their events to
/// `incoming`, until `outgoing` closes.
pub fn spawn(
    redis: Arc<Redis>,
    node: String,
    mut outgoing: mpsc::Receiver<String>,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    let channel = format!("{}:invalidations", redis.prefix());
    {
        let redis = Arc::clone(&redis);
        let channel = channel.clone();
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                let Some(event) = outgoing.recv().await else {
                    return;
                };
                let mut c = redis.conn();
                let sent: redis::RedisResult<i64> = redis
                    .timed(
                        "publish",
                        redis::cmd("PUBLISH")
                            .arg(&channel)
                            .arg(format!("{node}|{event}"))
                            .query_async(&mut c),
                    )
                    .await;
                if let Err(e) = sent {
                    metrics::counter!("portcullis_redis_errors_total", "op" => "publish")
                        .increment(1);
                    tracing::debug!(error = %e, "publishing an invalidation failed; other nodes catch up by polling");
                }
            }
        });
    }
    tokio::spawn(async move {
        use futures_util::StreamExt;
        loop {
            match redis.client().get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if let Err(e) = pubsub.subscribe(&channel).await {
                        tracing::warn!(error = %e, "subscribing to invalidations failed");
                    } else {
                        if incoming.send(Incoming::Resubscribed).is_err() {
                            return;
                        }
                        let mut messages = pubsub.on_message();
                        while let Some(msg) = messages.next().await {
                            let Ok(payload) = msg.get_payload::<String>() else {
                                continue;
                            };
                            let Some((from, event)) = payload.split_once('|') else {
                                continue;
                            };
                            if from != node
                                && incoming.send(Incoming::Event(event.to_owned())).is_err()
                            {
                                return;
                            }
                        }
                        tracing::warn!("the invalidation subscription ended; resubscribing");
                    }
                }
                Err(e) => {
                    metrics::counter!("portcullis_redis_errors_total", "op" => "subscribe")
                        .increment(1);
                    tracing::debug!(error = %e, "cannot subscribe to invalidations yet");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
