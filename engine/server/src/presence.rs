//! Presence: whether each user is online (over all of their connections on every core), their
//! status, `last_seen` and metadata; who is in each channel (per connection and per user), with
//! join/leave events when a user's first connection joins or last one leaves.
//!
//! State is kept in sharded maps (one short lock per connect, disconnect, join, leave or
//! status change, never per message). A sweeper thread ([`crate::Manager::start`] runs it)
//! applies the time rules: a user whose presence heartbeats stop for `heartbeat_timeout` turns
//! away; a custom status expires after `status_expiration`; a user whose last connection went
//! away turns offline after `grace` (a quick reconnect within it is not an offline at all).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edge_ws::ConnectionId;

use crate::limits::Sharded;

/// Presence settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceConfig {
    /// After a user's last connection closes, how long they stay online (absorbs a reconnect).
    pub grace: Duration,
    /// A connected user who sends no presence heartbeat (`presence.heartbeat`, or any
    /// `presence.set`) for this long turns `away`; `None`: connections alone count.
    pub heartbeat_timeout: Option<Duration>,
    /// A custom status set by a client reverts to `online` after this long; `None`: it stays.
    pub status_expiration: Option<Duration>,
    /// Whether clients may set their own status and metadata (`presence.set`).
    pub client_may_set: bool,
    /// Largest metadata, in bytes of JSON.
    pub max_meta_bytes: usize,
    /// Longest custom status, in bytes.
    pub max_status_len: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            grace: Duration::from_secs(5),
            heartbeat_timeout: None,
            status_expiration: None,
            client_may_set: true,
            max_meta_bytes: 1024,
            max_status_len: 64,
        }
    }
}

/// A user's status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    /// Connected and active.
    Online,
    /// Connected, but idle (heartbeats stopped) or said so.
    Away,
    /// No connection (after the grace period).
    Offline,
    /// A status the user or the server chose (e.g. `"in a meeting"`); the user is connected.
    Custom(String),
}

impl Status {
    /// The wire form: `online`, `away`, `offline` or the custom text.
    pub fn as_str(&self) -> &str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Offline => "offline",
            Status::Custom(s) => s,
        }
    }

    /// Parses the wire form (anything else is custom).
    pub fn parse(s: &str) -> Status {
        match s {
            "online" => Status::Online,
            "away" => Status::Away,
            "offline" => Status::Offline,
            other => Status::Custom(other.to_string()),
        }
    }
}

/// A user's presence as seen from anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPresence {
    /// The user.
    pub user: String,
    /// Their status.
    pub status: Status,
    /// When they were last connected or active (ms since the Unix epoch; now while online).
    pub last_seen_ms: u64,
    /// Open connections over all cores.
    pub connections: u32,
    /// Metadata (raw JSON), if set.
    pub meta: Option<String>,
}

/// A connection in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMember {
    /// The connection.
    pub connection: ConnectionId,
    /// Its user (`None` when anonymous).
    pub user: Option<String>,
}

/// Who is in a channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelPresence {
    /// Connections in it.
    pub clients: usize,
    /// Distinct users in it.
    pub users: usize,
    /// The members, when asked for (sorted by connection).
    pub members: Vec<ChannelMember>,
}

/// What changed in a channel when a connection joined or left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Membership {
    /// The user's first connection in the channel (or an anonymous connection): a join.
    First,
    /// Another connection of a user already there: nothing to announce.
    More,
    /// Was not a member (or already left).
    None,
}

#[derive(Debug)]
struct UserRec {
    conns: u32,
    status: Status,
    meta: Option<Box<str>>,
    last_seen_ms: u64,
    last_beat_ms: u64,
    status_set_ms: u64,
    /// When the last connection went (during the grace period).
    gone_since_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct ChannelRec {
    clients: HashMap<ConnectionId, Option<Arc<str>>>,
    users: HashMap<Arc<str>, u32>,
}

/// A status change the sweeper or a call made (for events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The user.
    pub user: String,
    /// The status before.
    pub from: Status,
    /// The status now.
    pub to: Status,
}

/// The presence state shared by every core.
#[derive(Debug)]
pub(crate) struct Presence {
    pub(crate) cfg: PresenceConfig,
    users: Sharded<Arc<str>, UserRec>,
    channels: Sharded<Arc<str>, ChannelRec>,
    /// Per connection, the presence channels it is in (to leave them on close).
    memberships: Sharded<ConnectionId, Vec<Arc<str>>>,
}

impl Presence {
    pub(crate) fn new(cfg: PresenceConfig) -> Self {
        Presence {
            cfg,
            users: Sharded::new(),
            channels: Sharded::new(),
            memberships: Sharded::new(),
        }
    }

    /// A connection of `user` opened. Returns the change, if the user was not online.
    pub(crate) fn connected(&self, user: &Arc<str>, now: u64) -> Option<PresenceChange> {
        let mut m = self.users.lock(&**user);
        let rec = m.entry(user.clone()).or_insert_with(|| UserRec {
            conns: 0,
            status: Status::Offline,
            meta: None,
            last_seen_ms: now,
            last_beat_ms: now,
            status_set_ms: now,
            gone_since_ms: None,
        });
        rec.conns += 1;
        rec.last_seen_ms = now;
        rec.last_beat_ms = now;
        rec.gone_since_ms = None;
        if rec.status == Status::Offline {
            rec.status = Status::Online;
            rec.status_set_ms = now;
            return Some(PresenceChange {
                user: user.to_string(),
                from: Status::Offline,
                to: Status::Online,
            });
        }
        None
    }

    /// A connection of `user` closed. Returns the change if the user went offline now (no
    /// grace period).
    pub(crate) fn disconnected(&self, user: &str, now: u64) -> Option<PresenceChange> {
        let mut m = self.users.lock(user);
        let rec = m.get_mut(user)?;
        rec.conns = rec.conns.saturating_sub(1);
        rec.last_seen_ms = now;
        if rec.conns > 0 {
            return None;
        }
        if self.cfg.grace.is_zero() {
            let from = std::mem::replace(&mut rec.status, Status::Offline);
            rec.meta = None;
            return Some(PresenceChange {
                user: user.to_string(),
                from,
                to: Status::Offline,
            });
        }
        rec.gone_since_ms = Some(now);
        None
    }

    /// A presence heartbeat of `user`: active again (an `away` set by the timeout turns online).
    pub(crate) fn heartbeat(&self, user: &str, now: u64) -> Option<PresenceChange> {
        let mut m = self.users.lock(user);
        let rec = m.get_mut(user)?;
        rec.last_beat_ms = now;
        rec.last_seen_ms = now;
        if rec.status == Status::Away && rec.conns > 0 {
            rec.status = Status::Online;
            rec.status_set_ms = now;
            return Some(PresenceChange {
                user: user.to_string(),
                from: Status::Away,
                to: Status::Online,
            });
        }
        None
    }

    /// Sets `user`'s status (and metadata, raw JSON, if given). Refused for a user with no
    /// connection (nobody to be present) and for `offline` (that is the absence of
    /// connections).
    pub(crate) fn set(
        &self,
        user: &str,
        status: Status,
        meta: Option<&str>,
        now: u64,
    ) -> Result<Option<PresenceChange>, String> {
        if status == Status::Offline {
            return Err("status offline cannot be set: it means no connection".into());
        }
        if let Status::Custom(s) = &status {
            if s.is_empty() || s.len() > self.cfg.max_status_len {
                return Err(format!(
                    "a custom status is 1 to {} bytes",
                    self.cfg.max_status_len
                ));
            }
        }
        if meta.is_some_and(|m| m.len() > self.cfg.max_meta_bytes) {
            return Err(format!(
                "presence metadata is at most {} bytes",
                self.cfg.max_meta_bytes
            ));
        }
        let mut m = self.users.lock(user);
        let rec = m
            .get_mut(user)
            .filter(|r| r.conns > 0)
            .ok_or_else(|| format!("user {user:?} has no open connection"))?;
        rec.last_beat_ms = now;
        rec.last_seen_ms = now;
        rec.status_set_ms = now;
        if let Some(meta) = meta {
            rec.meta = Some(meta.into());
        }
        let from = std::mem::replace(&mut rec.status, status.clone());
        Ok((from != status).then(|| PresenceChange {
            user: user.to_string(),
            from,
            to: status,
        }))
    }

    /// `user`'s presence (`None` if never seen since the process started).
    pub(crate) fn get(&self, user: &str) -> Option<UserPresence> {
        let m = self.users.lock(user);
        let r = m.get(user)?;
        Some(UserPresence {
            user: user.to_string(),
            status: r.status.clone(),
            last_seen_ms: r.last_seen_ms,
            connections: r.conns,
            meta: r.meta.as_deref().map(str::to_string),
        })
    }

    /// Applies the time rules at `now`; returns the changes.
    pub(crate) fn sweep(&self, now: u64) -> Vec<PresenceChange> {
        let ms = |d: Duration| d.as_millis() as u64;
        let grace = ms(self.cfg.grace);
        let beat = self.cfg.heartbeat_timeout.map(ms);
        let expire = self.cfg.status_expiration.map(ms);
        let mut changes = Vec::new();
        self.users.for_each_shard_mut(|m| {
            m.retain(|user, r| {
                let mut to = None;
                if r.conns == 0 {
                    if r.gone_since_ms.is_some_and(|t| now >= t + grace) {
                        to = Some(Status::Offline);
                        r.gone_since_ms = None;
                        r.meta = None;
                    }
                } else if beat.is_some_and(|b| now >= r.last_beat_ms + b)
                    && r.status == Status::Online
                {
                    to = Some(Status::Away);
                } else if matches!(r.status, Status::Custom(_))
                    && expire.is_some_and(|e| now >= r.status_set_ms + e)
                {
                    to = Some(Status::Online);
                }
                if let Some(to) = to {
                    r.status_set_ms = now;
                    let from = std::mem::replace(&mut r.status, to.clone());
                    changes.push(PresenceChange {
                        user: user.to_string(),
                        from,
                        to,
                    });
                }
                // Offline users are kept for their last_seen; forgotten a day later.
                !(r.conns == 0 && r.status == Status::Offline && now > r.last_seen_ms + 86_400_000)
            });
        });
        changes
    }

    /// `conn` (of `user`) joined `channel`.
    pub(crate) fn join(
        &self,
        channel: &Arc<str>,
        conn: ConnectionId,
        user: Option<&Arc<str>>,
    ) -> Membership {
        let first = {
            let mut m = self.channels.lock(&**channel);
            let rec = m.entry(channel.clone()).or_default();
            if rec.clients.insert(conn, user.cloned()).is_some() {
                return Membership::None;
            }
            match user {
                Some(u) => {
                    let n = rec.users.entry(u.clone()).or_insert(0);
                    *n += 1;
                    *n == 1
                }
                None => true,
            }
        };
        self.memberships
            .lock(&conn)
            .entry(conn)
            .or_default()
            .push(channel.clone());
        if first {
            Membership::First
        } else {
            Membership::More
        }
    }

    /// `conn` left `channel`: `First` means it was its user's last connection there (a leave).
    pub(crate) fn leave(
        &self,
        channel: &str,
        conn: ConnectionId,
    ) -> (Membership, Option<Arc<str>>) {
        let out = {
            let mut m = self.channels.lock(channel);
            let Some(rec) = m.get_mut(channel) else {
                return (Membership::None, None);
            };
            let Some(user) = rec.clients.remove(&conn) else {
                return (Membership::None, None);
            };
            let last = match &user {
                Some(u) => {
                    let n = rec.users.get_mut(u).map_or(0, |n| {
                        *n -= 1;
                        *n
                    });
                    if n == 0 {
                        rec.users.remove(u);
                        true
                    } else {
                        false
                    }
                }
                None => true,
            };
            if rec.clients.is_empty() {
                m.remove(channel);
            }
            (
                if last {
                    Membership::First
                } else {
                    Membership::More
                },
                user,
            )
        };
        let mut mm = self.memberships.lock(&conn);
        if let Some(list) = mm.get_mut(&conn) {
            list.retain(|c| &**c != channel);
            if list.is_empty() {
                mm.remove(&conn);
            }
        }
        out
    }

    /// The presence channels `conn` is in (taken: it is closing).
    pub(crate) fn take_memberships(&self, conn: ConnectionId) -> Vec<Arc<str>> {
        self.memberships
            .lock(&conn)
            .remove(&conn)
            .unwrap_or_default()
    }

    /// Who is in `channel`.
    pub(crate) fn channel(&self, channel: &str, with_members: bool) -> ChannelPresence {
        let m = self.channels.lock(channel);
        let Some(rec) = m.get(channel) else {
            return ChannelPresence::default();
        };
        let mut members: Vec<ChannelMember> = if with_members {
            rec.clients
                .iter()
                .map(|(c, u)| ChannelMember {
                    connection: *c,
                    user: u.as_deref().map(str::to_string),
                })
                .collect()
        } else {
            Vec::new()
        };
        members.sort_by_key(|m| (m.connection.core(), m.connection.slot()));
        ChannelPresence {
            clients: rec.clients.len(),
            users: rec.users.len() + rec.clients.values().filter(|u| u.is_none()).count(),
            members,
        }
    }
}

/// A user's presence as the envelope and the HTTP API send it:
/// `{"user","status","last_seen","connections","meta"}`.
pub(crate) fn presence_json(p: &UserPresence) -> String {
    format!(
        r#"{{"user":{},"status":{},"last_seen":{},"connections":{},"meta":{}}}"#,
        serde_json::to_string(&p.user).unwrap_or_default(),
        serde_json::to_string(p.status.as_str()).unwrap_or_default(),
        p.last_seen_ms,
        p.connections,
        p.meta.as_deref().unwrap_or("null")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PresenceConfig {
        PresenceConfig {
            grace: Duration::from_millis(100),
            heartbeat_timeout: Some(Duration::from_millis(1000)),
            status_expiration: Some(Duration::from_millis(5000)),
            ..PresenceConfig::default()
        }
    }

    #[test]
    fn a_user_is_online_while_any_connection_is_and_offline_after_the_grace() {
        let p = Presence::new(cfg());
        let alice: Arc<str> = "alice".into();
        assert_eq!(p.connected(&alice, 0).unwrap().to, Status::Online);
        assert!(
            p.connected(&alice, 10).is_none(),
            "second connection: no change"
        );
        assert!(p.disconnected("alice", 20).is_none());
        assert_eq!(p.get("alice").unwrap().connections, 1);
        assert!(p.disconnected("alice", 30).is_none(), "within the grace");
        assert_eq!(p.get("alice").unwrap().status, Status::Online);
        // A reconnect within the grace: never offline.
        assert!(p.connected(&alice, 60).is_none());
        assert!(p.sweep(500).is_empty());
        assert!(p.disconnected("alice", 600).is_none());
        assert!(p.sweep(650).is_empty());
        let ch = p.sweep(700);
        assert_eq!(ch[0].to, Status::Offline);
        let u = p.get("alice").unwrap();
        assert_eq!(
            (u.status, u.last_seen_ms, u.connections),
            (Status::Offline, 600, 0)
        );
    }

    #[test]
    fn heartbeats_custom_status_and_their_expiry() {
        let p = Presence::new(cfg());
        let bob: Arc<str> = "bob".into();
        p.connected(&bob, 0);
        assert!(p.sweep(999).is_empty());
        assert_eq!(p.sweep(1000)[0].to, Status::Away, "no heartbeat for 1 s");
        assert_eq!(p.heartbeat("bob", 1100).unwrap().to, Status::Online);
        let c = p
            .set(
                "bob",
                Status::Custom("in a meeting".into()),
                Some(r#"{"room":7}"#),
                1200,
            )
            .unwrap()
            .unwrap();
        assert_eq!(c.to.as_str(), "in a meeting");
        assert_eq!(p.get("bob").unwrap().meta.as_deref(), Some(r#"{"room":7}"#));
        // Heartbeats keep it; the expiration resets it to online.
        p.heartbeat("bob", 2000);
        p.heartbeat("bob", 3000);
        p.heartbeat("bob", 6000);
        assert_eq!(p.sweep(6200)[0].to, Status::Online);
        // Bad input.
        assert!(p.set("bob", Status::Offline, None, 7000).is_err());
        assert!(p
            .set("bob", Status::Custom(String::new()), None, 7000)
            .is_err());
        assert!(p
            .set("bob", Status::Online, Some(&"x".repeat(2000)), 7000)
            .is_err());
        assert!(p.set("nobody", Status::Away, None, 7000).is_err());
    }

    #[test]
    fn channel_membership_counts_users_once_and_announces_first_and_last() {
        let p = Presence::new(cfg());
        let ch: Arc<str> = "chat:a".into();
        let (u1, u2): (Arc<str>, Arc<str>) = ("u1".into(), "u2".into());
        let id = |i| ConnectionId::for_tests(0, i);
        assert_eq!(p.join(&ch, id(1), Some(&u1)), Membership::First);
        assert_eq!(p.join(&ch, id(2), Some(&u1)), Membership::More);
        assert_eq!(
            p.join(&ch, id(2), Some(&u1)),
            Membership::None,
            "already in"
        );
        assert_eq!(p.join(&ch, id(3), Some(&u2)), Membership::First);
        assert_eq!(p.join(&ch, id(4), None), Membership::First);
        let c = p.channel("chat:a", true);
        assert_eq!((c.clients, c.users, c.members.len()), (4, 3, 4));
        assert_eq!(p.leave("chat:a", id(1)).0, Membership::More);
        assert_eq!(p.leave("chat:a", id(1)).0, Membership::None);
        assert_eq!(p.take_memberships(id(2)), vec![ch.clone()]);
        assert_eq!(p.leave("chat:a", id(2)).0, Membership::First, "u1's last");
        assert_eq!(p.channel("chat:a", false).users, 2);
        p.leave("chat:a", id(3));
        p.leave("chat:a", id(4));
        assert_eq!(p.channel("chat:a", true), ChannelPresence::default());
    }
}
