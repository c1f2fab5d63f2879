//! Following one pub/sub subscription for as long as it lives, for both the
//! wake subscriber and the watch on the sentinels. A connection that died
//! without a FIN (a middlebox dropped it) delivers nothing and never ends,
//! so it is PINGed, and given up when the answer does not come.

use std::future::Future;
use std::time::Duration;

use deadpool_redis::redis::{Value, aio::PubSub};
use futures::StreamExt;

/// How often a subscription is PINGed to notice a dead connection.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Hands each message's channel and payload to `on_message` until the
/// subscription ends, a PING goes unanswered for `ping_timeout`, or `stop`
/// completes.
pub(super) async fn follow(
    pubsub: PubSub,
    ping_timeout: Duration,
    mut on_message: impl FnMut(&str, &[u8]),
    stop: impl Future<Output = ()>,
) {
    let (mut sink, mut messages) = pubsub.split();
    let mut keepalive = tokio::time::interval(PING_EVERY);
    keepalive.tick().await;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return };
                on_message(message.get_channel_name(), message.get_payload_bytes());
            }
            _ = keepalive.tick() => {
                let pong = tokio::time::timeout(ping_timeout, sink.ping::<Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return;
                }
            }
            () = &mut stop => return,
        }
    }
}
