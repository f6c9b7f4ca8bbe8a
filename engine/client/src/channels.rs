//! [`ChannelClient`]: channels of the edge-ws JSON envelope (docs/PROTOCOL.md §3) over a
//! [`ReconnectingClient`](crate::ReconnectingClient), resubscribing with recovery positions after every reconnect.
//!
//! For every channel it was asked to subscribe to, the client remembers the last `offset` and
//! `epoch` it delivered. On every connection (the first one included) the reconnecting
//! client's [`on_connect`](crate::ReconnectBuilder::on_connect) hook puts one `subscribe` per
//! channel ahead of everything queued, with `"since": {offset, epoch}` when a position is
//! known. The server then sends what was missed before the live publications, or says that it
//! cannot (`recovered: false` and a reason), which is surfaced as
//! [`ChannelEvent::Subscribed`] with [`Recovery::NotRecovered`].
//!
//! **Deduplication.** A publication whose offset is at or below the last one delivered for
//! its channel, in the same epoch, is dropped (and counted in [`ChannelStats::duplicates`]).
//! This is what makes resubscribing safe when the position sent was older than what was
//! already received: messages of the old connection may still be waiting in the receive queue
//! when the new connection's `subscribe` is built, so the position it carries can lag behind;
//! the server then sends some publications again, and they are dropped here. Every
//! publication of a channel with history is therefore delivered at most once and in offset
//! order; with `recovered: true`, none is missing either.
//!
//! **What the position is.** It starts as the `subscribed` reply's position (a subscription
//! without `since` is live from that offset on), moves with every delivered publication, and
//! is reset to the reply's position after `recovered: false` (the past cannot be had; the
//! application should reload its state). A channel without history has no position and is
//! resubscribed live.
//!
//! **Requests.** Every request gets a numeric id from one counter. `published`
//! acknowledgements and errors come back as [`ChannelEvent::Published`] and
//! [`ChannelEvent::Error`] with that id. A `subscribe` sent by [`ChannelClient::subscribe`]
//! that races a reconnect can reach the server after the hook's own `subscribe` for the same
//! channel; its `already subscribed` error is expected and swallowed.
//!
//! ```no_run
//! use edge_ws_client::channels::{ChannelClient, ChannelEvent};
//! use edge_ws_client::Client;
//!
//! # async fn run() -> edge_ws_client::Result<()> {
//! let mut c = ChannelClient::start(Client::reconnecting("ws://127.0.0.1:9001/ws"))?;
//! c.subscribe("chat:lobby").await?;
//! while let Some(ev) = c.recv().await {
//!     match ev? {
//!         ChannelEvent::Publication(p) => println!("{} #{:?}: {}", p.channel, p.offset, p.data),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::message::{Message, Stats};
use crate::reconnect::{Events, ReconnectBuilder};
use crate::socket::{Receiver, Sender};

/// A position in a channel's stream: the last offset seen and the stream's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The offset (1, 2, 3, … per channel; 0 before the first publication).
    pub offset: u64,
    /// The stream's lifetime; a new epoch means the past was lost.
    pub epoch: String,
}

/// A publication as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The channel.
    pub channel: String,
    /// Its offset (channels with history only).
    pub offset: Option<u64>,
    /// Its epoch (channels with history only).
    pub epoch: Option<String>,
    /// The publisher's `data`, byte for byte as the server sent it (JSON text).
    pub data: String,
}

/// How a `subscribe` was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Sent without `since` (no position known): live from the reply's position on.
    Live,
    /// `recovered: true`: the `missed` publications after the position follow, then live
    /// ones. Nothing was lost.
    Recovered {
        /// How many publications the server is sending again.
        missed: u64,
    },
    /// `recovered: false`: publications after the position cannot be had. Reload the state
    /// from the application; the stream continues from the reply's position.
    NotRecovered {
        /// `epoch_changed`, `too_old`, `ahead` or `no_history` (docs/PROTOCOL.md §3).
        reason: String,
    },
}

/// The kind of request an error answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// A `subscribe` for this channel.
    Subscribe(String),
    /// An `unsubscribe` for this channel.
    Unsubscribe(String),
    /// A `publish` to this channel.
    Publish(String),
}

/// What [`ChannelClient::recv`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// A publication, not seen before.
    Publication(Publication),
    /// A `subscribe` (the application's or the reconnect hook's) was answered.
    Subscribed {
        /// The channel.
        channel: String,
        /// The stream's position in the reply (`None` for a channel without history).
        position: Option<Position>,
        /// Whether what was missed follows.
        recovery: Recovery,
    },
    /// An `unsubscribe` was answered.
    Unsubscribed {
        /// The channel.
        channel: String,
    },
    /// A `publish` was acknowledged (for a persistent channel: it is on disk).
    Published {
        /// The id [`ChannelClient::publish`] returned.
        id: u64,
        /// The channel.
        channel: String,
        /// Its offset and epoch (channels with history).
        position: Option<Position>,
        /// A repeat of an idempotency key: nothing new was published.
        duplicate: bool,
    },
    /// The server refused a request; the connection stays open.
    Error {
        /// The request's id, if it had one.
        id: Option<u64>,
        /// What the request was, if it was one of ours.
        request: Option<RequestKind>,
        /// The server's message.
        error: String,
        /// The server's `retry_after_ms`, if any.
        retry_after_ms: Option<u64>,
    },
    /// Anything else the server sent (another envelope type, binary, not JSON).
    Other(Message),
}

/// Counters of a [`ChannelClient`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Publications delivered.
    pub delivered: u64,
    /// Publications dropped as already delivered (offset at or below the last one, same
    /// epoch): recovery sent them again.
    pub duplicates: u64,
    /// Publications whose offset skipped ahead of the last one plus one, same epoch
    /// (delivered anyway; the server only does this after telling, e.g. `too_old`).
    pub gaps: u64,
    /// `subscribe` requests sent by the reconnect hook.
    pub resubscribes: u64,
    /// `already subscribed` errors swallowed (a subscribe that raced a reconnect).
    pub already_subscribed: u64,
}

#[derive(Debug, Default)]
struct Chan {
    position: Option<Position>,
}

#[derive(Debug)]
struct Pending {
    kind: RequestKind,
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    channels: BTreeMap<String, Chan>,
    next_id: u64,
    /// Connections made so far; requests of older generations than the previous one are
    /// forgotten (their answers can no longer come).
    generation: u64,
    pending: HashMap<u64, Pending>,
    stats: ChannelStats,
}

impl State {
    fn request(&mut self, kind: RequestKind) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(
            id,
            Pending {
                kind,
                generation: self.generation,
            },
        );
        id
    }

    /// The messages that open every connection: one `subscribe` per channel, with its
    /// position when one is known.
    fn on_connect(&mut self) -> Vec<Message> {
        self.generation += 1;
        let keep = self.generation.saturating_sub(1);
        self.pending.retain(|_, p| p.generation >= keep);
        let channels: Vec<(String, Option<Position>)> = self
            .channels
            .iter()
            .map(|(name, c)| (name.clone(), c.position.clone()))
            .collect();
        let mut out = Vec::with_capacity(channels.len());
        for (name, position) in channels {
            let id = self.request(RequestKind::Subscribe(name.clone()));
            self.stats.resubscribes += 1;
            out.push(Message::text(subscribe_json(id, &name, position.as_ref())));
        }
        out
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn subscribe_json(id: u64, channel: &str, since: Option<&Position>) -> String {
    match since {
        Some(p) => format!(
            r#"{{"type":"subscribe","id":{id},"data":{{"channel":{},"since":{{"offset":{},"epoch":{}}}}}}}"#,
            quote(channel),
            p.offset,
            quote(&p.epoch)
        ),
        None => format!(
            r#"{{"type":"subscribe","id":{id},"data":{{"channel":{}}}}}"#,
            quote(channel)
        ),
    }
}

/// The envelope fields this client reads.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReplyData {
    channel: String,
    offset: Option<u64>,
    epoch: Option<String>,
    recovered: Option<bool>,
    missed: Option<u64>,
    reason: Option<String>,
    duplicate: Option<bool>,
    retry_after_ms: Option<u64>,
}

fn position(offset: Option<u64>, epoch: Option<String>) -> Option<Position> {
    Some(Position {
        offset: offset?,
        epoch: epoch?,
    })
}

/// Channels over a [`ReconnectingClient`](crate::ReconnectingClient); see the
/// [module docs](self).
#[derive(Debug)]
pub struct ChannelClient {
    sender: Sender,
    receiver: Receiver,
    events: Events,
    state: Arc<Mutex<State>>,
}

impl ChannelClient {
    /// Starts `reconnect` (see [`ReconnectBuilder::start`]) with this client's
    /// [`on_connect`](ReconnectBuilder::on_connect) hook, which replaces any set before.
    pub fn start(reconnect: ReconnectBuilder) -> Result<ChannelClient> {
        let state = Arc::new(Mutex::new(State::default()));
        let hook = state.clone();
        let client = reconnect
            .on_connect(move |_info| lock(&hook).on_connect())
            .start()?;
        let (sender, receiver, events) = client.split();
        Ok(ChannelClient {
            sender,
            receiver,
            events,
            state,
        })
    }

    /// Subscribes to `channel`, live from now on, and keeps it subscribed across reconnects.
    /// Returns the request's id. Subscribing twice is a no-op (returns `None`).
    pub async fn subscribe(&self, channel: &str) -> Result<Option<u64>> {
        self.subscribe_at(channel, None).await
    }

    /// Subscribes to `channel` from `since` (a position kept by the application, e.g. from a
    /// previous run): what came after it is sent first.
    pub async fn subscribe_from(&self, channel: &str, since: Position) -> Result<Option<u64>> {
        self.subscribe_at(channel, Some(since)).await
    }

    async fn subscribe_at(&self, channel: &str, since: Option<Position>) -> Result<Option<u64>> {
        let (id, text) = {
            let mut st = lock(&self.state);
            if st.channels.contains_key(channel) {
                return Ok(None);
            }
            st.channels.insert(
                channel.to_string(),
                Chan {
                    position: since.clone(),
                },
            );
            let id = st.request(RequestKind::Subscribe(channel.to_string()));
            (id, subscribe_json(id, channel, since.as_ref()))
        };
        self.sender.send(Message::text(text)).await?;
        Ok(Some(id))
    }

    /// Unsubscribes from `channel` (and stops resubscribing it). Returns the request's id, or
    /// `None` if it was not subscribed.
    pub async fn unsubscribe(&self, channel: &str) -> Result<Option<u64>> {
        let id = {
            let mut st = lock(&self.state);
            if st.channels.remove(channel).is_none() {
                return Ok(None);
            }
            st.request(RequestKind::Unsubscribe(channel.to_string()))
        };
        let text = format!(
            r#"{{"type":"unsubscribe","id":{id},"data":{{"channel":{}}}}}"#,
            quote(channel)
        );
        self.sender.send(Message::text(text)).await?;
        Ok(Some(id))
    }

    /// Publishes `data` (JSON text, sent as is) to `channel`, optionally with an idempotency
    /// key, and returns the request's id; the acknowledgement is a
    /// [`ChannelEvent::Published`] with that id. Waits while the write queue is full.
    pub async fn publish(
        &self,
        channel: &str,
        data: &str,
        idempotency_key: Option<&str>,
    ) -> Result<u64> {
        if serde_json::from_str::<&RawValue>(data).is_err() {
            return Err(Error::Config(format!(
                "publish data must be JSON text, got {data:?}"
            )));
        }
        let id = lock(&self.state).request(RequestKind::Publish(channel.to_string()));
        let key = idempotency_key
            .map(|k| format!(r#","idempotency_key":{}"#, quote(k)))
            .unwrap_or_default();
        let text = format!(
            r#"{{"type":"publish","id":{id},"data":{{"channel":{},"data":{data}{key}}}}}"#,
            quote(channel)
        );
        self.sender.send(Message::text(text)).await?;
        Ok(id)
    }

    /// The last position delivered (or announced by a `subscribed` reply) for `channel`.
    pub fn position(&self, channel: &str) -> Option<Position> {
        lock(&self.state)
            .channels
            .get(channel)
            .and_then(|c| c.position.clone())
    }

    /// The channels subscribed to, sorted.
    pub fn channels(&self) -> Vec<String> {
        lock(&self.state).channels.keys().cloned().collect()
    }

    /// The next event; `None` once the underlying client has stopped (after the error that
    /// stopped it, if any).
    pub async fn recv(&mut self) -> Option<Result<ChannelEvent>> {
        loop {
            let msg = match self.receiver.recv().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            if let Some(ev) = self.handle(msg) {
                return Some(Ok(ev));
            }
        }
    }

    /// The reconnecting client's connection events (connected, disconnected, gave up).
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// The sending half of the underlying client, for other messages.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// This layer's counters.
    pub fn channel_stats(&self) -> ChannelStats {
        lock(&self.state).stats
    }

    /// The underlying client's counters (connects, messages, …).
    pub fn stats(&self) -> Stats {
        self.sender.stats()
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(&self, code: u16, reason: &str) -> Result<()> {
        self.sender.close(code, reason).await
    }

    /// Interprets one message: `Some` to hand out, `None` when it was consumed (a duplicate,
    /// an expected `already subscribed`).
    fn handle(&self, msg: Message) -> Option<ChannelEvent> {
        let Some(text) = msg.as_text() else {
            return Some(ChannelEvent::Other(msg));
        };
        let Ok(m) = serde_json::from_str::<Incoming<'_>>(text) else {
            return Some(ChannelEvent::Other(msg));
        };
        let id = m.id.and_then(|r| r.get().parse::<u64>().ok());
        let mut st = lock(&self.state);
        match m.kind {
            "publication" => {
                let channel = m.channel.unwrap_or_default();
                let data = m.data.map(|d| d.get().to_string()).unwrap_or_default();
                if let (Some(c), Some(offset), Some(epoch)) =
                    (st.channels.get_mut(&channel), m.offset, m.epoch.as_ref())
                {
                    let mut gap = false;
                    if let Some(p) = &c.position {
                        if p.epoch == *epoch {
                            if offset <= p.offset {
                                st.stats.duplicates += 1;
                                return None;
                            }
                            gap = offset > p.offset + 1;
                        }
                    }
                    c.position = Some(Position {
                        offset,
                        epoch: epoch.clone(),
                    });
                    if gap {
                        st.stats.gaps += 1;
                    }
                }
                st.stats.delivered += 1;
                Some(ChannelEvent::Publication(Publication {
                    channel,
                    offset: m.offset,
                    epoch: m.epoch,
                    data,
                }))
            }
            "subscribed" => {
                if let Some(id) = id {
                    st.pending.remove(&id);
                }
                let d: ReplyData = m
                    .data
                    .and_then(|d| serde_json::from_str(d.get()).ok())
                    .unwrap_or_default();
                let reply = position(d.offset, d.epoch);
                let recovery = match (d.recovered, d.reason) {
                    (Some(true), _) => Recovery::Recovered {
                        missed: d.missed.unwrap_or(0),
                    },
                    (Some(false), reason) => Recovery::NotRecovered {
                        reason: reason.unwrap_or_default(),
                    },
                    (None, _) => Recovery::Live,
                };
                if let Some(c) = st.channels.get_mut(&d.channel) {
                    match recovery {
                        // What was missed follows; the position moves with it.
                        Recovery::Recovered { .. } => {}
                        // Live from the reply's position (first subscription, or the past
                        // is gone). A known position in the same epoch is never moved back.
                        Recovery::Live | Recovery::NotRecovered { .. } => {
                            let keep = matches!(
                                (&c.position, &reply),
                                (Some(p), Some(r)) if p.epoch == r.epoch && p.offset > r.offset
                            );
                            if !keep {
                                c.position = reply.clone();
                            }
                        }
                    }
                }
                Some(ChannelEvent::Subscribed {
                    channel: d.channel,
                    position: reply,
                    recovery,
                })
            }
            "unsubscribed" => {
                if let Some(id) = id {
                    st.pending.remove(&id);
                }
                let d: ReplyData = m
                    .data
                    .and_then(|d| serde_json::from_str(d.get()).ok())
                    .unwrap_or_default();
                Some(ChannelEvent::Unsubscribed { channel: d.channel })
            }
            "published" => {
                let d: ReplyData = m
                    .data
                    .and_then(|d| serde_json::from_str(d.get()).ok())
                    .unwrap_or_default();
                match id {
                    Some(id) if st.pending.remove(&id).is_some() => Some(ChannelEvent::Published {
                        id,
                        channel: d.channel,
                        position: position(d.offset, d.epoch),
                        duplicate: d.duplicate.unwrap_or(false),
                    }),
                    _ => Some(ChannelEvent::Other(msg.clone())),
                }
            }
            "error" => {
                let error = m.error.unwrap_or_default();
                let request = id.and_then(|id| st.pending.remove(&id)).map(|p| p.kind);
                if let Some(RequestKind::Subscribe(ch)) = &request {
                    if error.starts_with("already subscribed") && st.channels.contains_key(ch) {
                        st.stats.already_subscribed += 1;
                        return None;
                    }
                }
                let retry_after_ms = m.retry_after_ms.or_else(|| {
                    m.data
                        .and_then(|d| serde_json::from_str::<ReplyData>(d.get()).ok())
                        .and_then(|d| d.retry_after_ms)
                });
                Some(ChannelEvent::Error {
                    id,
                    request,
                    error,
                    retry_after_ms,
                })
            }
            _ => Some(ChannelEvent::Other(msg.clone())),
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_state() -> ChannelClient {
        // A client whose connection never comes up; only `handle` is exercised.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let b = crate::Client::reconnecting("ws://127.0.0.1:9/ws").max_attempts(Some(1));
        ChannelClient::start(b).unwrap()
    }

    #[test]
    fn subscribe_messages_carry_the_position_and_escape_names() {
        let p = Position {
            offset: 42,
            epoch: "9203718844".into(),
        };
        assert_eq!(
            subscribe_json(1, "chat:lobby", Some(&p)),
            r#"{"type":"subscribe","id":1,"data":{"channel":"chat:lobby","since":{"offset":42,"epoch":"9203718844"}}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&subscribe_json(2, "a\"b", None)).unwrap();
        assert_eq!(v["data"]["channel"], "a\"b");
        assert!(v["data"].get("since").is_none());
    }

    #[test]
    fn duplicates_are_dropped_within_an_epoch_and_a_new_epoch_resets() {
        let c = client_state();
        lock(&c.state)
            .channels
            .insert("h:x".into(), Chan::default());
        let sub = |off: u64, epoch: &str, extra: &str| {
            Message::text(format!(
                r#"{{"type":"subscribed","id":1,"data":{{"channel":"h:x","offset":{off},"epoch":"{epoch}"{extra}}}}}"#
            ))
        };
        let publ = |off: u64, epoch: &str| {
            Message::text(format!(
                r#"{{"type":"publication","channel":"h:x","offset":{off},"epoch":"{epoch}","data":{{"n": {off}}}}}"#
            ))
        };
        assert!(matches!(
            c.handle(sub(5, "e1", "")),
            Some(ChannelEvent::Subscribed {
                recovery: Recovery::Live,
                ..
            })
        ));
        assert_eq!(c.position("h:x").unwrap().offset, 5);
        assert!(
            c.handle(publ(5, "e1")).is_none(),
            "at the position: a duplicate"
        );
        match c.handle(publ(6, "e1")) {
            Some(ChannelEvent::Publication(p)) => {
                assert_eq!((p.offset, p.data.as_str()), (Some(6), r#"{"n": 6}"#));
            }
            other => panic!("{other:?}"),
        }
        assert!(c.handle(publ(6, "e1")).is_none());
        assert!(c.handle(publ(3, "e1")).is_none());
        // A recovery replaying from an older position: only the new ones come through.
        assert!(matches!(
            c.handle(sub(8, "e1", r#","recovered":true,"missed":4"#)),
            Some(ChannelEvent::Subscribed {
                recovery: Recovery::Recovered { missed: 4 },
                ..
            })
        ));
        let delivered: Vec<u64> = (5..=8)
            .filter_map(|o| match c.handle(publ(o, "e1")) {
                Some(ChannelEvent::Publication(p)) => p.offset,
                _ => None,
            })
            .collect();
        assert_eq!(delivered, vec![7, 8]);
        // The past is gone: a new epoch, continuing from the reply.
        assert!(matches!(
            c.handle(sub(2, "e2", r#","recovered":false,"reason":"epoch_changed""#)),
            Some(ChannelEvent::Subscribed { recovery: Recovery::NotRecovered { ref reason }, .. }) if reason == "epoch_changed"
        ));
        assert_eq!(
            c.position("h:x"),
            Some(Position {
                offset: 2,
                epoch: "e2".into()
            })
        );
        assert!(c.handle(publ(2, "e2")).is_none());
        assert!(matches!(
            c.handle(publ(4, "e2")),
            Some(ChannelEvent::Publication(_))
        ));
        let s = c.channel_stats();
        assert_eq!((s.delivered, s.duplicates, s.gaps), (4, 6, 1));
    }

    #[test]
    fn already_subscribed_after_a_race_is_swallowed_other_errors_are_not() {
        let c = client_state();
        let (a, b) = {
            let mut st = lock(&c.state);
            st.channels.insert("h:x".into(), Chan::default());
            (
                st.request(RequestKind::Subscribe("h:x".into())),
                st.request(RequestKind::Publish("h:x".into())),
            )
        };
        let err = |id: u64, e: &str| {
            Message::text(format!(r#"{{"type":"error","id":{id},"error":"{e}"}}"#))
        };
        assert!(c
            .handle(err(a, "already subscribed to \\\"h:x\\\""))
            .is_none());
        match c.handle(err(b, "store: disk full")) {
            Some(ChannelEvent::Error {
                id: Some(id),
                request: Some(RequestKind::Publish(ch)),
                ..
            }) => assert_eq!((id, ch.as_str()), (b, "h:x")),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.channel_stats().already_subscribed, 1);
        assert!(matches!(
            c.handle(Message::text("not json")),
            Some(ChannelEvent::Other(_))
        ));
    }
}
