//! Channels over the JSON envelope: `subscribe` (with recovery), `unsubscribe`, `publish`
//! (acknowledged, idempotent) and `history` as built-in routes of a [`Router`]
//! ([`Router::channels`]), the publication envelope every subscriber receives
//! ([`EnvelopeFormat`]), and, with the `store` feature, the durable store behind persistent
//! namespaces ([`StoreStreams`], [`restore_streams`]). Wire format: docs/PROTOCOL.md, §
//! "Channels".

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use edge_ws::stream::PublicationFormat;
use edge_ws::{
    ConnectionId, HistoryPage, HistoryQuery, MessageKind, PublishOptions, Recovery,
    RecoveryFailure, Socket, StreamError, StreamPosition,
};
use serde::Deserialize;

use crate::router::{Context, Envelope, RouteError, Router};
use crate::UserContext;

/// What a client asks to do with a channel (for [`ChannelAccess`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOp {
    /// Subscribe (and recover).
    Subscribe,
    /// Publish.
    Publish,
    /// Read the history.
    History,
}

/// Decides whether a connection's user may do `op` on a channel: `Err(text)` is answered as
/// the error. The default allows everything.
pub type ChannelAccess =
    Arc<dyn Fn(Option<&UserContext>, &str, ChannelOp) -> Result<(), String> + Send + Sync>;

/// The message subscribers receive for a publication:
/// `{"type":"publication","channel":C,"offset":N,"epoch":"E","data":D}` where `D` is the
/// published JSON (a channel without history has no `offset` and `epoch`). The epoch is a
/// string: it is a 64-bit identifier, beyond what a JavaScript number holds exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeFormat;

impl EnvelopeFormat {
    /// What a publication to `channel` carries into the engine: the published JSON as it is
    /// for a stream (its owner core wraps it with the offset), the whole publication envelope
    /// otherwise. The one place both the `publish` route and the HTTP API build it.
    pub(crate) fn payload<'a>(stream: bool, channel: &str, data: &'a [u8]) -> Cow<'a, [u8]> {
        if stream {
            Cow::Borrowed(data)
        } else {
            let mut framed = Vec::with_capacity(data.len() + channel.len() + 48);
            EnvelopeFormat::write(channel, None, data, &mut framed);
            Cow::Owned(framed)
        }
    }

    fn write(channel: &str, position: Option<StreamPosition>, data: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"type":"publication","channel":"#);
        json_string(channel, out);
        if let Some(p) = position {
            let _ = write!(
                VecWriter(out),
                r#","offset":{},"epoch":"{}""#,
                p.offset,
                p.epoch
            );
        }
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(data);
        out.push(b'}');
    }
}

impl PublicationFormat for EnvelopeFormat {
    fn encode(
        &self,
        channel: &str,
        position: StreamPosition,
        payload: &[u8],
        _kind: MessageKind,
        out: &mut Vec<u8>,
    ) -> Option<MessageKind> {
        EnvelopeFormat::write(channel, Some(position), payload, out);
        Some(MessageKind::Text)
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json never fails on a str.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    offset: u64,
    epoch: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeReq {
    channel: String,
    #[serde(default)]
    since: Option<Since>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelReq {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Not to the publishing connection itself (typing indicators, cursor echoes).
    #[serde(default)]
    exclude_self: bool,
}

/// A history read, as the `history` route and the HTTP API take it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryReq {
    pub(crate) channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    reverse: bool,
}

/// Most publications a `history` request returns when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

fn parse_epoch(s: &str) -> Result<u64, RouteError> {
    s.parse().map_err(|_| RouteError::invalid_data())
}

/// `{"type":T,"id":I,"data":D}` with `id` only if the request had one.
fn envelope(kind: &str, id: Option<&str>, data: &str) -> String {
    crate::json::envelope(kind, id, Some(data))
}

/// The error envelope for a stream error, with a retry hint when retrying may help.
fn stream_error(id: Option<&str>, e: &StreamError) -> String {
    let retry = e
        .is_retryable()
        .then_some(crate::route_error::RETRY_AFTER_MS);
    crate::json::error_envelope(id, &e.to_string(), retry, "")
}

pub(crate) fn position_fields(out: &mut String, p: Option<StreamPosition>) {
    if let Some(p) = p {
        let _ = write!(out, r#","offset":{},"epoch":"{}""#, p.offset, p.epoch);
    }
}

fn failure_name(f: RecoveryFailure) -> &'static str {
    match f {
        RecoveryFailure::EpochChanged => "epoch_changed",
        RecoveryFailure::TooOld => "too_old",
        RecoveryFailure::Ahead => "ahead",
        RecoveryFailure::NoHistory => "no_history",
        _ => "unknown",
    }
}

pub(crate) fn history_data(channel: &str, page: &HistoryPage) -> String {
    let mut d = String::from(r#"{"channel":"#);
    d.push_str(&serde_json::to_string(channel).unwrap_or_default());
    position_fields(&mut d, Some(page.position));
    let _ = write!(
        d,
        r#","first_offset":{},"publications":["#,
        page.first_offset
    );
    for (i, p) in page.publications.iter().enumerate() {
        if i > 0 {
            d.push(',');
        }
        d.push_str(std::str::from_utf8(&p.data).unwrap_or("null"));
    }
    d.push_str("]}");
    d
}

fn send(s: &mut Socket<'_, '_>, text: &str) {
    let _ = s.send_text(text);
}

impl Router {
    /// Adds the built-in channel routes (`subscribe`, `unsubscribe`, `publish`, `history`;
    /// docs/PROTOCOL.md) allowing every user everything. Pair it with [`EnvelopeFormat`] on
    /// the engine ([`crate::Manager::start`] installs it).
    pub fn channels(self) -> Router {
        self.channels_with(Arc::new(|_, _, _| Ok(())))
    }

    /// [`Router::channels`] with an access check per request.
    pub fn channels_with(self, access: ChannelAccess) -> Router {
        let (a1, a2, a3) = (access.clone(), access.clone(), access);
        let r = self
            .route("subscribe", move |ctx, msg| subscribe(ctx, msg, &a1))
            .route("unsubscribe", |ctx, msg| {
                let req: ChannelReq = msg.data()?;
                let was = ctx.leave(&req.channel);
                if was {
                    let (manager, id) = (ctx.manager().clone(), ctx.id());
                    leave_one(ctx.socket(), &manager, &req.channel, id);
                }
                let data = format!(
                    r#"{{"channel":{},"was_subscribed":{was}}}"#,
                    serde_json::to_string(&req.channel)?
                );
                let text = envelope("unsubscribed", msg.id(), &data);
                let _ = ctx.send_text(&text);
                Ok(())
            })
            .route("publish", move |ctx, msg| publish(ctx, msg, &a2))
            .route("history", move |ctx, msg| history(ctx, msg, &a3))
            .route("presence.set", presence_set)
            .route("presence.heartbeat", |ctx, msg| {
                let user = ctx.user().map(|u| u.id().to_string());
                let user = user.ok_or_else(|| RouteError::new("presence needs a user"))?;
                let inner = &ctx.manager().inner;
                inner.presence_changed(inner.presence.heartbeat(&user, crate::wall_ms()));
                if let Some(id) = msg.id() {
                    let _ = ctx.send_text(&envelope("presence.heartbeat", Some(id), "null"));
                }
                Ok(())
            })
            .route("presence.get", presence_get)
            .route("presence.channel", presence_channel);
        #[cfg(feature = "store")]
        let r = r
            .route("notifications.list", inbox::list)
            .route("notifications.read", |ctx, msg| inbox::mark(ctx, msg, true))
            .route("notifications.delivered", |ctx, msg| {
                inbox::mark(ctx, msg, false)
            })
            .route("notifications.send", inbox::send_to)
            .route("doc.join", docs::join)
            .route("doc.leave", docs::leave)
            .route("doc.edit", docs::edit)
            .route("doc.cursor", docs::cursor);
        r
    }
}

/// The `doc.*` routes: requests go to the documents thread, which answers the connection.
#[cfg(feature = "store")]
mod docs {
    use super::*;

    fn service(ctx: &Context<'_, '_>) -> Result<crate::documents::Documents, RouteError> {
        ctx.manager()
            .documents()
            .cloned()
            .ok_or_else(|| RouteError::new("documents are not enabled"))
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct JoinReq {
        doc: String,
        #[serde(default)]
        revision: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LeaveReq {
        doc: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EditReq<'a> {
        doc: String,
        revision: u64,
        #[serde(borrow)]
        op: &'a serde_json::value::RawValue,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CursorReq<'a> {
        doc: String,
        revision: u64,
        #[serde(borrow)]
        selection: &'a serde_json::value::RawValue,
    }

    pub(super) fn join(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
        let req: JoinReq = msg.data()?;
        let user = ctx.user().map(|u| u.id().to_string());
        service(ctx)?.join(&req.doc, ctx.id(), user.as_deref(), req.revision, msg.id());
        Ok(())
    }

    pub(super) fn leave(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
        let req: LeaveReq = msg.data()?;
        service(ctx)?.leave(&req.doc, ctx.id(), msg.id());
        Ok(())
    }

    pub(super) fn edit(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
        let req: EditReq<'_> = msg.data()?;
        service(ctx)?.edit(&req.doc, ctx.id(), req.revision, req.op.get(), msg.id());
        Ok(())
    }

    pub(super) fn cursor(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
        let req: CursorReq<'_> = msg.data()?;
        service(ctx)?.cursor(&req.doc, ctx.id(), req.revision, req.selection.get());
        Ok(())
    }
}

/// The `notifications.*` routes: a user reads and marks their own inbox only.
#[cfg(feature = "store")]
mod inbox {
    use super::*;
    use crate::notifications::{ListQuery, NotificationError, Selection};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ListReq {
        #[serde(default)]
        limit: Option<usize>,
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        offset: Option<usize>,
        #[serde(default)]
        unread: bool,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Which {
        All(String),
        Ids(Vec<u64>),
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct MarkReq {
        ids: Which,
    }

    /// The user, the service and the engine to answer through.
    fn setup(
        ctx: &Context<'_, '_>,
    ) -> Result<
        (
            String,
            crate::notifications::Notifications,
            edge_ws::EngineHandle,
        ),
        RouteError,
    > {
        let user = ctx
            .user()
            .map(|u| u.id().to_string())
            .ok_or_else(|| RouteError::new("notifications need a user"))?;
        let n = ctx
            .manager()
            .notifications()
            .cloned()
            .ok_or_else(|| RouteError::new("notifications are not enabled"))?;
        let e = ctx
            .manager()
            .engine()
            .cloned()
            .ok_or_else(|| RouteError::new("notifications are not available"))?;
        Ok((user, n, e))
    }

    fn error(id: Option<&str>, e: &NotificationError) -> String {
        let retry =
            matches!(e, NotificationError::Store(_)).then_some(crate::route_error::RETRY_AFTER_MS);
        crate::json::error_envelope(id, &e.to_string(), retry, "")
    }

    /// Sends the answer to a request made to the notification thread: `kind` with the data
    /// `ok` renders, or the error.
    fn answer<T>(
        engine: &edge_ws::EngineHandle,
        conn: ConnectionId,
        id: Option<&str>,
        kind: &str,
        r: Result<T, NotificationError>,
        ok: impl FnOnce(T) -> String,
    ) {
        let text = match r {
            Ok(v) => envelope(kind, id, &ok(v)),
            Err(e) => error(id, &e),
        };
        engine.send_text(conn, &text);
    }

    pub(super) fn list(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
        let req: ListReq = msg.data()?;
        let (user, n, engine) = setup(ctx)?;
        let (conn, id) = (ctx.id(), msg.id().map(str::to_owned));
        let query = ListQuery {
            limit: req.limit.unwrap_or(20),
            before: req.before,
            offset: req.offset.unwrap_or(0),
            unread_only: req.unread,
        };
        n.list(&user, query, move |r| {
            answer(&engine, conn, id.as_deref(), "notifications", r, |page| {
                crate::notifications::page_json(&page)
            });
        });
        Ok(())
    }

    /// A notification to send, as `notifications.send` and the HTTP API's `notify` take it.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct SendReq<'a> {
        pub(crate) user: String,
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        title: String,
        #[serde(default)]
        body: String,
        #[serde(borrow, default)]
        data: Option<&'a serde_json::value::RawValue>,
    }

    impl SendReq<'_> {
        /// The notification it describes.
        pub(crate) fn into_notification(self) -> crate::notifications::NewNotification {
            crate::notifications::NewNotification {
                kind: self.kind,
                title: self.title,
                body: self.body,
                data: self.data.map(|d| d.get().to_string()),
            }
        }
    }

    /// The permission a connection needs to send notifications to any user over the envelope.
    pub(crate) const SEND_PERMISSION: &str = "notifications:send";

    /// `notifications.send`: for users holding [`SEND_PERMISSION`] (a backend's connection);
    /// answered with the id once the notification is durable.
    pub(super) fn send_to(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
        if !ctx.has_permission(SEND_PERMISSION) {
            return Err(RouteError::new(format!(
                "sending needs the {SEND_PERMISSION} permission"
            )));
        }
        let req: SendReq<'_> = msg.data()?;
        let (_, n, engine) = setup(ctx)?;
        let (conn, id) = (ctx.id(), msg.id().map(str::to_owned));
        let user = req.user.clone();
        n.send(&user, req.into_notification(), move |r| {
            answer(
                &engine,
                conn,
                id.as_deref(),
                "notifications.sent",
                r,
                |nid| format!(r#"{{"id":{nid}}}"#),
            );
        });
        Ok(())
    }

    pub(super) fn mark(
        ctx: &mut Context<'_, '_>,
        msg: &Envelope<'_>,
        read: bool,
    ) -> Result<(), RouteError> {
        let req: MarkReq = msg.data()?;
        let which = match req.ids {
            Which::All(s) if s == "all" => Selection::All,
            Which::All(_) => return Err(RouteError::invalid_data()),
            Which::Ids(ids) if ids.len() <= 1000 => Selection::Ids(ids),
            Which::Ids(_) => return Err(RouteError::new("at most 1000 ids per request")),
        };
        let (user, n, engine) = setup(ctx)?;
        let (conn, id) = (ctx.id(), msg.id().map(str::to_owned));
        n.mark(&user, which, read, move |r| {
            answer(
                &engine,
                conn,
                id.as_deref(),
                "notifications.marked",
                r,
                |changed| format!(r#"{{"changed":{changed}}}"#),
            );
        });
        Ok(())
    }
}

/// The push announcing that `user` (connection `client`) joined or left `channel`.
fn presence_event(kind: &str, channel: &str, user: Option<&str>, client: &str) -> String {
    let mut d = String::from(r#"{"user":"#);
    d.push_str(&serde_json::to_string(&user).unwrap_or_default());
    let _ = write!(d, r#","client":"{client}"}}"#);
    format!(
        r#"{{"type":"{kind}","channel":{},"data":{d}}}"#,
        serde_json::to_string(channel).unwrap_or_default()
    )
}

fn announce(s: &mut Socket<'_, '_>, channel: &str, text: &str) {
    let opts = PublishOptions {
        transient: true,
        ..PublishOptions::default()
    };
    s.publish_with(channel, text.as_bytes(), MessageKind::Text, opts);
}

/// After a subscription went live: membership, and the join event if it is the user's first
/// connection in a channel that announces them.
fn join_presence(
    s: &mut Socket<'_, '_>,
    manager: &crate::Manager,
    channel: &str,
    user: Option<&Arc<str>>,
) {
    let policy = s.channel_policy(channel);
    if !policy.presence {
        return;
    }
    let announce_it = policy.join_leave;
    let name: Arc<str> = channel.into();
    let id = s.id();
    let m = manager.inner.presence.join(&name, id, user);
    if let Some(c) = manager.inner.cluster.get() {
        if m != crate::presence::Membership::None {
            let text = (m == crate::presence::Membership::First && announce_it).then(|| {
                presence_event(
                    "presence.join",
                    channel,
                    user.map(|u| &**u),
                    &c.client_id(id),
                )
            });
            c.joined(channel, id, user.map(|u| &**u), text);
        }
        return;
    }
    if m == crate::presence::Membership::First && announce_it {
        let text = presence_event(
            "presence.join",
            channel,
            user.map(|u| &**u),
            &id.to_string(),
        );
        announce(s, channel, &text);
    }
}

/// `id` left `channel`: membership, and the leave event if it was its user's last connection.
fn leave_one(s: &mut Socket<'_, '_>, manager: &crate::Manager, channel: &str, id: ConnectionId) {
    let (m, user) = manager.inner.presence.leave(channel, id);
    if let Some(c) = manager.inner.cluster.get() {
        if m != crate::presence::Membership::None {
            let text = (m == crate::presence::Membership::First
                && s.channel_policy(channel).join_leave)
                .then(|| {
                    presence_event("presence.leave", channel, user.as_deref(), &c.client_id(id))
                });
            c.left(channel, id, user.as_deref(), text);
        }
        return;
    }
    if m == crate::presence::Membership::First && s.channel_policy(channel).join_leave {
        let text = presence_event("presence.leave", channel, user.as_deref(), &id.to_string());
        announce(s, channel, &text);
    }
}

/// A closing connection leaves every presence channel it was in.
pub(crate) fn leave_presence(s: &mut Socket<'_, '_>, manager: &crate::Manager, id: ConnectionId) {
    for channel in manager.inner.presence.take_memberships(id) {
        leave_one(s, manager, &channel, id);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceSetReq<'a> {
    status: String,
    #[serde(borrow, default)]
    meta: Option<&'a serde_json::value::RawValue>,
}

fn presence_set(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
    let req: PresenceSetReq<'_> = msg.data()?;
    let user = ctx
        .user()
        .map(|u| u.id().to_string())
        .ok_or_else(|| RouteError::new("presence needs a user"))?;
    let inner = &ctx.manager().inner;
    if !inner.presence.cfg.client_may_set {
        return Err(RouteError::new("presence is set by the server"));
    }
    let status = crate::presence::Status::parse(&req.status);
    let change = inner
        .presence
        .set(&user, status, req.meta.map(|m| m.get()), crate::wall_ms())
        .map_err(RouteError::new)?;
    inner.presence_changed(change);
    let p = inner
        .presence
        .get(&user)
        .ok_or_else(|| RouteError::new("no presence"))?;
    let text = envelope("presence", msg.id(), &crate::presence::presence_json(&p));
    let _ = ctx.send_text(&text);
    Ok(())
}

/// Most users one `presence.get` asks about.
pub const MAX_PRESENCE_QUERY: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceGetReq {
    users: Vec<String>,
}

fn presence_get(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
    let req: PresenceGetReq = msg.data()?;
    if req.users.len() > MAX_PRESENCE_QUERY {
        return Err(RouteError::new(format!(
            "presence.get asks about at most {MAX_PRESENCE_QUERY} users"
        )));
    }
    if ctx.manager().inner.cluster.get().is_some() && !req.users.is_empty() {
        return presence_get_everywhere(ctx, msg, req.users);
    }
    let mut d = String::from(r#"{"users":["#);
    for (i, u) in req.users.iter().enumerate() {
        if i > 0 {
            d.push(',');
        }
        let p = ctx
            .manager()
            .presence(u)
            .unwrap_or(crate::presence::UserPresence {
                user: u.clone(),
                status: crate::presence::Status::Offline,
                last_seen_ms: 0,
                connections: 0,
                meta: None,
            });
        d.push_str(&crate::presence::presence_json(&p));
    }
    d.push_str("]}");
    let _ = ctx.send_text(&envelope("presence", msg.id(), &d));
    Ok(())
}

/// The JSON of a user nobody has online.
pub(crate) fn offline_json(user: &str, last_seen: Option<u64>) -> String {
    let mut d = String::from(r#"{"user":"#);
    crate::json::push_str(&mut d, user);
    match last_seen {
        Some(t) => {
            let _ = write!(d, r#","status":"offline","last_seen":{t}"#);
        }
        None => d.push_str(r#","status":"offline","last_seen":null"#),
    }
    d.push_str(r#","connections":0,"meta":null}"#);
    d
}

/// `presence.get` in a cluster: every user's presence over the nodes, answered once all are
/// in (or with the first error).
fn presence_get_everywhere(
    ctx: &mut Context<'_, '_>,
    msg: &Envelope<'_>,
    users: Vec<String>,
) -> Result<(), RouteError> {
    type Parts = (Vec<Option<String>>, usize, bool);
    let engine = ctx
        .manager()
        .engine()
        .cloned()
        .ok_or_else(|| RouteError::new("presence is not available"))?;
    let (conn, id) = (ctx.id(), msg.id().map(str::to_owned));
    let n = users.len();
    let parts: Arc<std::sync::Mutex<Parts>> =
        Arc::new(std::sync::Mutex::new((vec![None; n], 0, false)));
    for (i, u) in users.into_iter().enumerate() {
        let (parts, engine, id) = (parts.clone(), engine.clone(), id.clone());
        ctx.manager().presence_everywhere(&u.clone(), move |r| {
            let mut p = parts.lock().unwrap_or_else(|e| e.into_inner());
            if p.2 {
                return; // answered with an error already
            }
            match r {
                Ok(found) => {
                    p.0[i] = Some(match found {
                        Some(found) => crate::presence::presence_json(&found),
                        None => offline_json(&u, None),
                    });
                    p.1 += 1;
                    if p.1 == n {
                        let mut d = String::from(r#"{"users":["#);
                        for (j, part) in p.0.iter().enumerate() {
                            if j > 0 {
                                d.push(',');
                            }
                            d.push_str(part.as_deref().unwrap_or("null"));
                        }
                        d.push_str("]}");
                        engine.send_text(conn, &envelope("presence", id.as_deref(), &d));
                    }
                }
                Err(e) => {
                    p.2 = true;
                    let text = crate::json::error_envelope(
                        id.as_deref(),
                        &format!("presence: {e}"),
                        Some(crate::route_error::RETRY_AFTER_MS),
                        "",
                    );
                    engine.send_text(conn, &text);
                }
            }
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceChannelReq {
    channel: String,
    #[serde(default)]
    members: bool,
}

fn presence_channel(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
    let req: PresenceChannelReq = msg.data()?;
    if !ctx.socket().channel_policy(&req.channel).presence {
        return Err(RouteError::new(format!(
            "channel {:?} does not track presence",
            req.channel
        )));
    }
    if ctx.manager().inner.cluster.get().is_some() {
        let engine = ctx
            .manager()
            .engine()
            .cloned()
            .ok_or_else(|| RouteError::new("presence is not available"))?;
        let (conn, id) = (ctx.id(), msg.id().map(str::to_owned));
        let (channel, members) = (req.channel.clone(), req.members);
        ctx.manager()
            .channel_presence_everywhere(&req.channel, req.members, move |r| {
                let text = match r {
                    Ok(p) => envelope(
                        "presence.channel",
                        id.as_deref(),
                        &cluster_channel_presence_json(&channel, &p, members),
                    ),
                    Err(e) => crate::json::error_envelope(
                        id.as_deref(),
                        &format!("presence: {e}"),
                        Some(crate::route_error::RETRY_AFTER_MS),
                        "",
                    ),
                };
                engine.send_text(conn, &text);
            });
        return Ok(());
    }
    let p = ctx.manager().channel_presence(&req.channel, req.members);
    let d = channel_presence_json(&req.channel, &p, req.members);
    let _ = ctx.send_text(&envelope("presence.channel", msg.id(), &d));
    Ok(())
}

/// The data of a `presence.channel` reply in a cluster (the same shape, client ids
/// `<node>:<core>:<conn>`).
pub(crate) fn cluster_channel_presence_json(
    channel: &str,
    p: &crate::ClusterChannelPresence,
    members: bool,
) -> String {
    presence_channel_json(
        channel,
        p.clients,
        p.users,
        members.then(|| {
            p.members
                .iter()
                .map(|m| (m.client.as_str().into(), &m.user))
        }),
    )
}

/// The data of a `presence.channel` reply.
pub(crate) fn channel_presence_json(
    channel: &str,
    p: &crate::presence::ChannelPresence,
    members: bool,
) -> String {
    presence_channel_json(
        channel,
        p.clients,
        p.users,
        members.then(|| {
            p.members
                .iter()
                .map(|m| (m.connection.to_string().into(), &m.user))
        }),
    )
}

/// `{"channel","clients","users"[,"members":[{"client","user"}…]]}`.
fn presence_channel_json<'a>(
    channel: &str,
    clients: usize,
    users: usize,
    members: Option<impl ExactSizeIterator<Item = (std::borrow::Cow<'a, str>, &'a Option<String>)>>,
) -> String {
    let n = members.as_ref().map_or(0, |m| m.len());
    let mut d = String::with_capacity(64 + n * 48);
    let _ = write!(
        d,
        r#"{{"channel":{},"clients":{clients},"users":{users}"#,
        serde_json::to_string(channel).unwrap_or_default(),
    );
    if let Some(members) = members {
        d.push_str(r#","members":["#);
        for (i, (client, user)) in members.enumerate() {
            if i > 0 {
                d.push(',');
            }
            d.push_str(r#"{"client":"#);
            crate::json::push_str(&mut d, &client);
            let _ = write!(
                d,
                r#","user":{}}}"#,
                serde_json::to_string(user).unwrap_or_default()
            );
        }
        d.push(']');
    }
    d.push('}');
    d
}

fn check(
    ctx: &Context<'_, '_>,
    access: &ChannelAccess,
    channel: &str,
    op: ChannelOp,
) -> Result<(), RouteError> {
    reserved(channel).map_err(RouteError::new)?;
    access(ctx.user(), channel, op).map_err(RouteError::new)
}

/// Refuses the per-user channels (`user#…`) and the documents' (`doc#…`): they carry the
/// server's sends to a user and document revisions across a cluster, not client traffic.
pub(crate) fn reserved(channel: &str) -> Result<(), String> {
    for prefix in [edge_ws::broker::USER_CHANNEL_PREFIX, DOC_CHANNEL_PREFIX] {
        if channel.starts_with(prefix) {
            return Err(format!(
                "channel names starting with {prefix:?} are reserved for the server"
            ));
        }
    }
    Ok(())
}

/// The prefix of the documents' cluster channels (`doc#<id>`, engine/server/src/documents.rs).
const DOC_CHANNEL_PREFIX: &str = "doc#";

fn subscribe(
    ctx: &mut Context<'_, '_>,
    msg: &Envelope<'_>,
    access: &ChannelAccess,
) -> Result<(), RouteError> {
    let req: SubscribeReq = msg.data()?;
    check(ctx, access, &req.channel, ChannelOp::Subscribe)?;
    let since = match &req.since {
        Some(s) => Some(StreamPosition {
            offset: s.offset,
            epoch: parse_epoch(&s.epoch)?,
        }),
        None => None,
    };
    let id = msg.id().map(str::to_owned);
    let channel = req.channel;
    let name = serde_json::to_string(&channel)?;
    let manager = ctx.manager().clone();
    let user = ctx.user().map(|u| u.id_arc().clone());
    let ch = channel.clone();
    ctx.socket()
        .subscribe_with(&channel, since, move |s, r| match r {
            Ok(sub) => {
                let mut d = format!(r#"{{"channel":{name}"#);
                position_fields(&mut d, sub.position);
                match sub.recovery {
                    Recovery::NotRequested => {}
                    Recovery::Recovered { missed } => {
                        let _ = write!(d, r#","recovered":true,"missed":{missed}"#);
                    }
                    Recovery::Failed(f) => {
                        let _ = write!(d, r#","recovered":false,"reason":"{}""#, failure_name(f));
                    }
                }
                d.push('}');
                send(s, &envelope("subscribed", id.as_deref(), &d));
                join_presence(s, &manager, &ch, user.as_ref());
            }
            Err(e) => send(s, &stream_error(id.as_deref(), &e)),
        });
    Ok(())
}

/// The options of a publish with an optional idempotency key (1 to
/// [`MAX_IDEMPOTENCY_KEY`] bytes): the one check for the `publish` route and the HTTP API.
pub(crate) fn publish_options(idempotency_key: Option<&str>) -> Result<PublishOptions, String> {
    if idempotency_key.is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY) {
        return Err(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
        ));
    }
    Ok(PublishOptions {
        idempotency_key: idempotency_key.map(Arc::from),
        ..PublishOptions::default()
    })
}

fn publish(
    ctx: &mut Context<'_, '_>,
    msg: &Envelope<'_>,
    access: &ChannelAccess,
) -> Result<(), RouteError> {
    let req: PublishReq<'_> = msg.data()?;
    check(ctx, access, &req.channel, ChannelOp::Publish)?;
    let mut opts = publish_options(req.idempotency_key.as_deref()).map_err(RouteError::new)?;
    opts.exclude = req.exclude_self.then(|| ctx.id());
    let stream = ctx.socket().has_history(&req.channel);
    let id = msg.id().map(str::to_owned);
    let name = serde_json::to_string(&req.channel)?;
    let done = move |s: &mut Socket<'_, '_>, r: edge_ws::stream::PublishResult| match r {
        Ok(p) => {
            // Acknowledged only when asked (the request had an id).
            if id.is_some() {
                let mut d = format!(r#"{{"channel":{name}"#);
                position_fields(&mut d, p.position);
                let _ = write!(d, r#","duplicate":{}}}"#, p.duplicate);
                send(s, &envelope("published", id.as_deref(), &d));
            }
        }
        Err(e) => send(s, &stream_error(id.as_deref(), &e)),
    };
    let payload = EnvelopeFormat::payload(stream, &req.channel, req.data.get().as_bytes());
    ctx.socket()
        .publish_acked(&req.channel, &payload, MessageKind::Text, opts, done);
    Ok(())
}

impl HistoryReq {
    /// The query it asks for (`since` and `reverse` exclude each other).
    pub(crate) fn query(&self) -> Result<HistoryQuery, &'static str> {
        let limit = self.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        match (self.since, self.reverse) {
            (Some(after), false) => Ok(HistoryQuery::Since { after, limit }),
            (None, false) => Ok(HistoryQuery::Last(limit)),
            (None, true) => Ok(HistoryQuery::NewestFirst(limit)),
            (Some(_), true) => Err("since and reverse cannot be combined"),
        }
    }
}

fn history(
    ctx: &mut Context<'_, '_>,
    msg: &Envelope<'_>,
    access: &ChannelAccess,
) -> Result<(), RouteError> {
    let req: HistoryReq = msg.data()?;
    check(ctx, access, &req.channel, ChannelOp::History)?;
    let query = req
        .query()
        .map_err(|e| RouteError::new(format!("history: {e}")))?;
    let id = msg.id().map(str::to_owned);
    let channel = req.channel;
    let ch = channel.clone();
    ctx.socket()
        .read_history(&channel, query, move |s, r| match r {
            Ok(page) => send(
                s,
                &envelope("history", id.as_deref(), &history_data(&ch, &page)),
            ),
            Err(e) => send(s, &stream_error(id.as_deref(), &e)),
        });
    Ok(())
}

#[cfg(feature = "store")]
pub use self::durable::{restore_streams, StoreStreams};
#[cfg(feature = "store")]
pub(crate) use self::inbox::SendReq as SendNotification;

#[cfg(feature = "store")]
mod durable {
    use super::*;
    use crate::store::{Append, Retention, StoreError, StoreHandle};
    use bytes::Bytes;
    use edge_ws::stream::{CommitAck, RestoredStream, StoredPublication, StreamStore};
    use edge_ws::ChannelConfig;

    /// The durable store behind persistent namespaces: each publication is one record
    /// (its kind in a leading byte, then the payload), appended through the store thread's
    /// group commit and acknowledged after its fsync.
    #[derive(Debug, Clone)]
    pub struct StoreStreams {
        store: StoreHandle,
    }

    impl StoreStreams {
        /// Over `store`.
        pub fn new(store: StoreHandle) -> Self {
            StoreStreams { store }
        }
    }

    fn err(e: StoreError) -> StreamError {
        StreamError::Store(e.to_string())
    }

    impl StreamStore for StoreStreams {
        fn append(&self, p: StoredPublication<'_>, done: CommitAck) -> Result<(), StreamError> {
            let mut rec = Vec::with_capacity(1 + p.payload.len());
            rec.push(match p.kind {
                MessageKind::Text => b't',
                MessageKind::Binary => b'b',
            });
            rec.extend_from_slice(p.payload);
            let mut retention = Retention::default().max_len(p.policy.history_size as u64);
            if let Some(ttl) = p.policy.history_ttl {
                retention = retention.ttl(ttl);
            }
            let append =
                Append::new(p.channel, p.epoch, p.offset, rec, p.timestamp_ms).retention(retention);
            self.store
                .try_append(append, Box::new(move |r| done(r.map_err(err))))
                .map_err(err)
        }

        fn position(&self, channel: &str) -> Result<Option<StreamPosition>, StreamError> {
            Ok(self
                .store
                .position(channel)
                .map_err(err)?
                .map(|p| StreamPosition {
                    offset: p.last_offset,
                    epoch: p.epoch,
                }))
        }
    }

    /// Every persistent channel the store holds, read back for
    /// `EngineBuilder::restore_streams`: its position and its last `history_size`
    /// publications. Channels whose namespace no longer persists are left out (their owner
    /// starts them afresh, with a new epoch).
    pub fn restore_streams(
        store: &StoreHandle,
        channels: &ChannelConfig,
    ) -> Result<Vec<RestoredStream>, StoreError> {
        let mut out = Vec::new();
        for (name, pos) in store.load_all_positions()? {
            let policy = channels.policy(&name);
            if !policy.persist {
                continue;
            }
            let h = store.read_last(&name, policy.history_size)?;
            let publications = h
                .records
                .into_iter()
                .filter_map(|r| {
                    let (&tag, rest) = r.payload.split_first()?;
                    let kind = if tag == b'b' {
                        MessageKind::Binary
                    } else {
                        MessageKind::Text
                    };
                    Some((r.offset, r.timestamp_ms, kind, Bytes::copy_from_slice(rest)))
                })
                .collect();
            out.push(RestoredStream {
                channel: name,
                position: StreamPosition {
                    offset: pos.last_offset,
                    epoch: pos.epoch,
                },
                publications,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publication_envelope_is_json_with_a_string_epoch() {
        let mut out = Vec::new();
        let p = StreamPosition {
            offset: 9,
            epoch: u64::MAX,
        };
        EnvelopeFormat.encode("chat:\"x\"", p, br#"{"t":1}"#, MessageKind::Text, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "publication");
        assert_eq!(v["channel"], "chat:\"x\"");
        assert_eq!(v["offset"], 9);
        assert_eq!(v["epoch"], u64::MAX.to_string());
        assert_eq!(v["data"]["t"], 1);
        let e = stream_error(Some("7"), &StreamError::Unavailable("c".into()));
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(
            (v["id"].as_u64(), v["retry_after_ms"].as_u64()),
            (Some(7), Some(100))
        );
    }
}
