//! The product's per-user features across the nodes of a cluster (an engine built with a
//! [`Broker`], e.g. the `[cluster]` section of the binary; docs/CLUSTER.md § "The server
//! product across nodes").
//!
//! - **Sends to a user** ([`crate::Manager::send_to_user`], `close_user`, notifications): a
//!   node where a user has a connection holds an in-process subscription to the user's channel
//!   ([`user_channel`]); a send goes to the user's connections on this node directly and to the
//!   other nodes through the broker, where that subscription hands it to the user's
//!   connections there. The user channel carries commands: `T` and a text to send, `C`, a close
//!   code, `:` and a reason.
//! - **User presence**: each node writes its view of every user with a connection here (or in
//!   the grace period) into the broker's presence, under `@user:<id>` (one member per node,
//!   its info the `presence` JSON) and `@users` (one member per node and user, for users
//!   online). The broker refreshes them and a dead node's entries expire.
//! - **Channel presence**: each connection in a presence channel is a member of the channel's
//!   broker presence (`<node>:<core>:<conn>`, info `{"user":…,"at":…}`); join and leave events
//!   are announced once per user cluster-wide (see [`Cluster::joined`]).
//!
//! Without a broker none of this exists: the manager's paths test one `Option`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use edge_ws::broker::{user_channel, Broker, BrokerError, PresenceMember};
use edge_ws::protocol::CloseCode;
use edge_ws::stream::LocalSubscription;
use edge_ws::{ConnectionId, EngineHandle, MessageKind, PublishOptions};
use serde::Deserialize;

use crate::presence::{Status, UserPresence};
use crate::{wall_ms, Inner, Manager};

/// The broker presence channel of users online (one member per node and user).
const USERS: &str = "@users";

/// How long a blocking cluster read waits for the broker before giving up.
pub(crate) const BLOCKING_TIMEOUT: Duration = Duration::from_secs(5);

fn user_key(user: &str) -> String {
    format!("@user:{user}")
}

/// Counters of the cluster paths (served on `/metrics` as `edge_ws_cluster_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Sends and closes for a user handed to the broker for the other nodes.
    pub user_commands_sent: u64,
    /// Sends and closes for a user received from other nodes and applied here.
    pub user_commands_received: u64,
    /// Presence reads that failed (broker down or an error), each answered with the error.
    pub presence_errors: u64,
    /// Unreadable user-channel messages or presence entries, dropped.
    pub malformed: u64,
    /// Users whose id cannot name a channel (see `EngineHandle::subscribe_fn`): sends to
    /// them do not reach this node from the others (logged).
    pub unlistenable_users: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    presence_errors: AtomicU64,
    malformed: AtomicU64,
    unlistenable: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A member of a channel's presence across the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    /// Its client id, unique cluster-wide: `<node>:<core>:<conn>`.
    pub client: String,
    /// Its user (`None` when anonymous).
    pub user: Option<String>,
}

/// Who is in a channel on every node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterChannelPresence {
    /// Connections in it.
    pub clients: usize,
    /// Distinct users in it (each anonymous connection counts as one).
    pub users: usize,
    /// The members, sorted by client (empty unless asked for).
    pub members: Vec<ClusterMember>,
}

#[derive(Deserialize)]
struct MemberInfo {
    user: Option<String>,
    #[serde(default)]
    at: u64,
}

#[derive(Deserialize)]
struct NodeView {
    status: String,
    last_seen: u64,
    connections: u32,
    #[serde(default)]
    meta: Option<Box<serde_json::value::RawValue>>,
}

/// The cluster side of a manager (present only when the engine has a broker).
pub(crate) struct Cluster {
    broker: Arc<dyn Broker>,
    engine: EngineHandle,
    /// This node's id in presence entries (16 hex digits).
    node: String,
    /// Users with a connection here: how many, and the subscription to their user channel.
    users: Mutex<HashMap<Arc<str>, (u32, LocalSubscription)>>,
    /// Held from reading a user's presence to queueing it for the broker, so that two cores
    /// syncing one user queue their views in the order they read them.
    sync: Mutex<()>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// A random node id (the OS-seeded hasher, the clock and the process id; no RNG crate).
pub(crate) fn node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

impl Cluster {
    /// The cluster side for `engine`, if it has a broker.
    pub(crate) fn new(engine: &EngineHandle) -> Option<Cluster> {
        let broker = engine.broker()?.clone();
        for probe in [user_channel("probe"), "doc#probe".to_string()] {
            if engine.has_history(&probe) {
                tracing::error!(
                    channel = %probe,
                    "cluster: user#/doc# channels have history in this configuration; sends to \
                     users and documents cannot cross nodes: give the prefix a namespace with \
                     history_size = 0"
                );
            }
        }
        Some(Cluster {
            broker,
            engine: engine.clone(),
            node: node_id(),
            users: Mutex::new(HashMap::new()),
            sync: Mutex::new(()),
            counters: Arc::new(Counters::default()),
        })
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn stats(&self) -> ClusterStats {
        let c = &self.counters;
        ClusterStats {
            user_commands_sent: c.sent.load(Ordering::Relaxed),
            user_commands_received: c.received.load(Ordering::Relaxed),
            presence_errors: c.presence_errors.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            unlistenable_users: c.unlistenable.load(Ordering::Relaxed),
        }
    }

    /// The id of connection `conn` of this node in cluster presence and events.
    pub(crate) fn client_id(&self, conn: ConnectionId) -> String {
        format!("{}:{conn}", self.node)
    }

    /// A connection of `user` opened here: the first one subscribes this node to the user's
    /// channel.
    pub(crate) fn opened(&self, inner: &Arc<Inner>, user: &Arc<str>) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, _)) = users.get_mut(user) {
            *n += 1;
            return;
        }
        let weak = Arc::downgrade(inner);
        let (u, counters) = (user.clone(), self.counters.clone());
        let sub = self.engine.subscribe_fn(&user_channel(user), move |_, p| {
            command(&weak, &u, &p.data, &counters)
        });
        match sub {
            Ok(sub) => {
                users.insert(user.clone(), (1, sub));
            }
            Err(e) => {
                bump(&self.counters.unlistenable);
                tracing::warn!(user = %user, error = %e, "cluster: cannot listen to the user's channel; sends from other nodes will not reach this user here");
            }
        }
    }

    /// A connection of `user` closed here: the last one ends the subscription.
    pub(crate) fn closed(&self, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, _)) = users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                users.remove(user);
            }
        }
    }

    /// Sends `text` to `user`'s connections on the other nodes.
    pub(crate) fn send_to_user(&self, user: &str, text: &str) {
        let mut cmd = Vec::with_capacity(text.len() + 1);
        cmd.push(b'T');
        cmd.extend_from_slice(text.as_bytes());
        self.publish(user, &cmd);
    }

    /// Closes `user`'s connections on the other nodes.
    pub(crate) fn close_user(&self, user: &str, code: CloseCode, reason: &str) {
        self.publish(user, format!("C{}:{reason}", code.0).as_bytes());
    }

    fn publish(&self, user: &str, cmd: &[u8]) {
        bump(&self.counters.sent);
        // Straight to the broker: this node's connections were served already, and an
        // engine publish would hand it to this node's own subscription too.
        self.broker
            .publish(&user_channel(user), cmd, MessageKind::Binary, None);
    }

    /// Writes this node's view of `user` into the cluster presence (or removes it once the
    /// user is offline here).
    pub(crate) fn sync_user(&self, inner: &Inner, user: &str) {
        let key = user_key(user);
        let online = self.client_online(user);
        let _order = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        match inner.presence.get(user) {
            Some(p) if p.connections > 0 || p.status != Status::Offline => {
                let info = crate::presence::presence_json(&p);
                self.broker.presence_join(&key, &self.node, info.as_bytes());
                self.broker.presence_join(USERS, &online, user.as_bytes());
            }
            _ => {
                self.broker.presence_leave(&key, &self.node);
                self.broker.presence_leave(USERS, &online);
            }
        }
    }

    fn client_online(&self, user: &str) -> String {
        format!("{}:{user}", self.node)
    }

    /// `user`'s presence over every node: connections summed, the status, metadata and
    /// `last_seen` of the node that saw them last (`None`: no node has them).
    pub(crate) fn user_presence(
        &self,
        user: &str,
        done: impl FnOnce(Result<Option<UserPresence>, BrokerError>) + Send + 'static,
    ) {
        let (u, counters) = (user.to_string(), self.counters.clone());
        self.broker.presence_list(
            &user_key(user),
            Box::new(move |r| match r {
                Ok(list) => done(Ok(merge_views(&u, &list, &counters))),
                Err(e) => {
                    bump(&counters.presence_errors);
                    done(Err(e))
                }
            }),
        );
    }

    /// How many distinct users have a connection (or are in their grace period) on any node.
    pub(crate) fn users_online(
        &self,
        done: impl FnOnce(Result<usize, BrokerError>) + Send + 'static,
    ) {
        let counters = self.counters.clone();
        self.broker.presence_list(
            USERS,
            Box::new(move |r| match r {
                Ok(list) => {
                    let mut users: Vec<&[u8]> = list.iter().map(|m| &m.info[..]).collect();
                    users.sort_unstable();
                    users.dedup();
                    done(Ok(users.len()))
                }
                Err(e) => {
                    bump(&counters.presence_errors);
                    done(Err(e))
                }
            }),
        );
    }

    /// Connection `conn` of `user` joined `channel` (a presence channel): a member of its
    /// cluster presence. `first`: the user's first connection in the channel on this node,
    /// and the channel announces joins: then the join is announced unless the user was in the
    /// channel on another node already (the earliest of the user's members announces, so two
    /// nodes joining at once announce once).
    pub(crate) fn joined(
        &self,
        channel: &str,
        conn: ConnectionId,
        user: Option<&str>,
        announce: Option<String>,
    ) {
        let client = self.client_id(conn);
        let at = wall_ms();
        let info = format!(
            r#"{{"user":{},"at":{at}}}"#,
            serde_json::to_string(&user).unwrap_or_default()
        );
        self.broker.presence_join(channel, &client, info.as_bytes());
        let Some(text) = announce else { return };
        let Some(user) = user.map(str::to_string) else {
            // An anonymous connection is its own member: always announced.
            return self.announce(channel, &text);
        };
        let (engine, ch, counters) = (
            self.engine.clone(),
            channel.to_string(),
            self.counters.clone(),
        );
        self.broker.presence_list(
            channel,
            Box::new(move |r| {
                let list = match r {
                    Ok(list) => list,
                    Err(e) => {
                        // Announce rather than stay silent: a join is worth a duplicate.
                        bump(&counters.presence_errors);
                        tracing::debug!(channel = %ch, error = %e, "cluster: join announced without the presence check");
                        return announce_on(&engine, &ch, &text);
                    }
                };
                let earliest = list
                    .iter()
                    .filter_map(|m| {
                        let i: MemberInfo = serde_json::from_slice(&m.info).ok()?;
                        (i.user.as_deref() == Some(user.as_str())).then_some((i.at, &m.client))
                    })
                    .min();
                if earliest.is_none_or(|(_, c)| *c == client) {
                    announce_on(&engine, &ch, &text);
                }
            }),
        );
    }

    /// Connection `conn` left `channel`. `announce`: it was its user's last connection in the
    /// channel on this node and the channel announces leaves: then the leave is announced if
    /// no other node has the user in the channel either.
    pub(crate) fn left(
        &self,
        channel: &str,
        conn: ConnectionId,
        user: Option<&str>,
        announce: Option<String>,
    ) {
        self.broker.presence_leave(channel, &self.client_id(conn));
        let Some(text) = announce else { return };
        let Some(user) = user.map(str::to_string) else {
            return self.announce(channel, &text);
        };
        let (engine, ch, counters) = (
            self.engine.clone(),
            channel.to_string(),
            self.counters.clone(),
        );
        self.broker.presence_list(
            channel,
            Box::new(move |r| {
                let still = match r {
                    Ok(list) => list.iter().any(|m| {
                        serde_json::from_slice::<MemberInfo>(&m.info)
                            .is_ok_and(|i| i.user.as_deref() == Some(user.as_str()))
                    }),
                    Err(e) => {
                        bump(&counters.presence_errors);
                        tracing::debug!(channel = %ch, error = %e, "cluster: leave announced without the presence check");
                        false
                    }
                };
                if !still {
                    announce_on(&engine, &ch, &text);
                }
            }),
        );
    }

    fn announce(&self, channel: &str, text: &str) {
        announce_on(&self.engine, channel, text);
    }

    /// Who is in `channel` on every node.
    pub(crate) fn channel_presence(
        &self,
        channel: &str,
        members: bool,
        done: impl FnOnce(Result<ClusterChannelPresence, BrokerError>) + Send + 'static,
    ) {
        let counters = self.counters.clone();
        self.broker.presence_list(
            channel,
            Box::new(move |r| match r {
                Ok(list) => done(Ok(channel_view(&list, members, &counters))),
                Err(e) => {
                    bump(&counters.presence_errors);
                    done(Err(e))
                }
            }),
        );
    }
}

/// A join or leave event: to the channel's subscribers on every node (transient: never kept
/// in a channel's history).
fn announce_on(engine: &EngineHandle, channel: &str, text: &str) {
    let opts = PublishOptions {
        transient: true,
        ..PublishOptions::default()
    };
    engine.publish_with(channel, text.as_bytes(), MessageKind::Text, opts);
}

fn channel_view(
    list: &[PresenceMember],
    with_members: bool,
    counters: &Counters,
) -> ClusterChannelPresence {
    let mut users: Vec<String> = Vec::new();
    let (mut clients, mut anonymous) = (0, 0);
    let mut members = Vec::new();
    for m in list {
        let Ok(info) = serde_json::from_slice::<MemberInfo>(&m.info) else {
            bump(&counters.malformed);
            continue;
        };
        clients += 1;
        match &info.user {
            Some(u) => users.push(u.clone()),
            None => anonymous += 1,
        }
        if with_members {
            members.push(ClusterMember {
                client: m.client.clone(),
                user: info.user,
            });
        }
    }
    users.sort_unstable();
    users.dedup();
    ClusterChannelPresence {
        clients,
        users: users.len() + anonymous,
        members,
    }
}

/// Merges the nodes' views of one user.
fn merge_views(user: &str, list: &[PresenceMember], counters: &Counters) -> Option<UserPresence> {
    let mut views = BTreeMap::new();
    for m in list {
        match serde_json::from_slice::<NodeView>(&m.info) {
            Ok(v) => {
                views.insert(m.client.clone(), v);
            }
            Err(_) => bump(&counters.malformed),
        }
    }
    let connections = views.values().map(|v| v.connections).sum();
    // The view of the node that saw the user last (ties: the one with connections).
    let latest = views
        .values()
        .max_by_key(|v| (v.connections > 0, v.last_seen))?;
    Some(UserPresence {
        user: user.to_string(),
        status: Status::parse(&latest.status),
        last_seen_ms: views.values().map(|v| v.last_seen).max().unwrap_or(0),
        connections,
        meta: latest.meta.as_ref().map(|m| m.get().to_string()),
    })
}

/// A command from the user's channel: applied to the user's connections on this node.
fn command(inner: &Weak<Inner>, user: &str, data: &[u8], counters: &Counters) {
    let Some(inner) = inner.upgrade() else { return };
    let m = Manager { inner };
    let Some(engine) = m.engine() else { return };
    match data.split_first() {
        Some((b'T', text)) => match std::str::from_utf8(text) {
            Ok(text) => {
                bump(&counters.received);
                engine.send_text_to_many(&m.user_sockets(user), text);
            }
            Err(_) => bump(&counters.malformed),
        },
        Some((b'C', rest)) => {
            let rest = String::from_utf8_lossy(rest);
            let Some((code, reason)) = rest.split_once(':') else {
                return bump(&counters.malformed);
            };
            let Ok(code) = code.parse::<u16>() else {
                return bump(&counters.malformed);
            };
            bump(&counters.received);
            for id in m.user_sockets(user) {
                engine.close(id, CloseCode(code), reason);
            }
        }
        _ => bump(&counters.malformed),
    }
}

/// Waits (not on a core) for an answer given to a callback, at most [`BLOCKING_TIMEOUT`].
pub(crate) fn blocking<T: Send + 'static>(
    start: impl FnOnce(Box<dyn FnOnce(Result<T, BrokerError>) + Send>),
) -> Result<T, BrokerError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    start(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(BLOCKING_TIMEOUT).unwrap_or_else(|_| {
        Err(BrokerError::Unavailable(
            "no answer from the broker in time".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn member(client: &str, info: &str) -> PresenceMember {
        PresenceMember {
            client: client.into(),
            info: Bytes::from(info.to_string()),
        }
    }

    #[test]
    fn without_a_broker_the_cluster_reads_answer_at_once_from_this_process() {
        let m = Manager::builder().build();
        assert!(m.cluster_node().is_none() && m.cluster_stats().is_none());
        let alice: Arc<str> = "alice".into();
        m.inner.presence.connected(&alice, 5);
        let room: Arc<str> = "room:a".into();
        m.inner
            .presence
            .join(&room, ConnectionId::for_tests(1, 7), Some(&alice));
        let p = m.presence_everywhere_blocking("alice").unwrap().unwrap();
        assert_eq!((p.connections, p.status), (1, Status::Online));
        assert!(m.presence_everywhere_blocking("bob").unwrap().is_none());
        // users_online counts open sockets, which this test has none of.
        assert_eq!(m.users_online_everywhere_blocking(), Ok(0));
        let c = m
            .channel_presence_everywhere_blocking("room:a", true)
            .unwrap();
        assert_eq!((c.clients, c.users), (1, 1));
        assert_eq!(
            c.members,
            vec![ClusterMember {
                client: ConnectionId::for_tests(1, 7).to_string(),
                user: Some("alice".into())
            }]
        );
    }

    #[test]
    fn the_nodes_views_of_a_user_merge_into_one_presence() {
        let c = Counters::default();
        let list = [
            member(
                "a",
                r#"{"user":"u","status":"away","last_seen":10,"connections":1,"meta":null}"#,
            ),
            member(
                "b",
                r#"{"user":"u","status":"in a call","last_seen":20,"connections":2,"meta":{"x":1}}"#,
            ),
            member(
                "c",
                r#"{"user":"u","status":"online","last_seen":30,"connections":0,"meta":null}"#,
            ),
            member("d", "not json"),
        ];
        let p = merge_views("u", &list, &c).unwrap();
        assert_eq!(p.connections, 3);
        assert_eq!(p.status, Status::Custom("in a call".into()));
        assert_eq!(p.meta.as_deref(), Some(r#"{"x":1}"#));
        assert_eq!(p.last_seen_ms, 30);
        assert_eq!(c.malformed.load(Ordering::Relaxed), 1);
        assert!(merge_views("u", &[], &c).is_none());
    }

    #[test]
    fn a_channel_view_counts_users_once_and_anonymous_connections_each() {
        let c = Counters::default();
        let list = [
            member("n1:0:1", r#"{"user":"u1","at":1}"#),
            member("n2:0:1", r#"{"user":"u1","at":2}"#),
            member("n2:0:2", r#"{"user":"u2","at":3}"#),
            member("n2:0:3", r#"{"user":null,"at":4}"#),
            member("n2:0:4", r#"{"user":null,"at":5}"#),
        ];
        let v = channel_view(&list, true, &c);
        assert_eq!((v.clients, v.users, v.members.len()), (5, 4, 5));
        assert_eq!(v.members[0].user.as_deref(), Some("u1"));
        assert!(channel_view(&list, false, &c).members.is_empty());
    }
}
