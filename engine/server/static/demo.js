// The edge-ws demo page: chat rooms with history, presence and typing indicators, a
// notifications inbox, and a shared text editor, all over one WebSocket speaking the JSON
// envelope of docs/PROTOCOL.md. Plain JavaScript, no build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const DOC = "demo";
const ROOM_KEY = "edge-ws-demo-room";

const state = {
  ws: null,
  user: null,
  token: null,
  nextId: 1,
  waiting: new Map(),      // request id -> callback(reply)
  room: localStorage.getItem(ROOM_KEY) || "chat:lobby",
  positions: new Map(),    // channel -> {offset, epoch}: the last publication seen
  seen: new Set(),         // "channel@offset" shown, so a recovery never doubles a line
  members: new Map(),      // client id -> user, in the current room
  typing: new Map(),       // user -> timer
  lastTyping: 0,
  unread: 0,
  ot: null,                // OtClient of the shared document
  docText: "",
  cursors: new Map(),      // client id -> {user, index}
  retries: 0,
  stopped: false,
  received: 0,
};

// ---- connection -------------------------------------------------------------------------

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const q = state.token ? `token=${encodeURIComponent(state.token)}`
                        : `user=${encodeURIComponent(state.user)}`;
  const ws = new WebSocket(`${proto}//${location.host}/ws?${q}`);
  state.ws = ws;
  setStatus("wait", "connecting…");
  ws.onopen = () => {
    state.retries = 0;
    setStatus("on", `signed in as ${state.user}`);
    onConnected();
  };
  ws.onmessage = (ev) => {
    state.received++;
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    dispatch(m);
  };
  ws.onclose = (ev) => {
    state.ws = null;
    for (const cb of state.waiting.values()) cb({ type: "error", error: "connection closed" });
    state.waiting.clear();
    $("doc").disabled = true;
    if (state.stopped) return setStatus("off", "signed out");
    // 4500-4999: do not reconnect (docs/PROTOCOL.md section 8).
    if (ev.code >= 4500 && ev.code <= 4999) {
      return setStatus("off", `closed: ${ev.reason || ev.code}`);
    }
    const delay = Math.min(10000, 250 * 2 ** state.retries++) * Math.random();
    setStatus("wait", `reconnecting (${ev.code})…`);
    setTimeout(() => { if (!state.stopped) connect(); }, delay);
  };
}

function send(type, data, onReply) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  const msg = { type };
  if (data !== undefined) msg.data = data;
  if (onReply) {
    msg.id = state.nextId++;
    state.waiting.set(msg.id, onReply);
  }
  state.ws.send(JSON.stringify(msg));
  return true;
}

function dispatch(m) {
  if (m.id !== undefined && state.waiting.has(m.id)) {
    const cb = state.waiting.get(m.id);
    state.waiting.delete(m.id);
    return cb(m);
  }
  switch (m.type) {
    case "publication": return onPublication(m);
    case "presence.join": return onJoin(m);
    case "presence.leave": return onLeave(m);
    case "notification": return addNotification(m.data, true);
    case "notifications.unread": return setUnread(m.data.count);
    case "doc.op": return onDocOp(m.data);
    case "doc.cursor": return onCursor(m.data);
    case "doc.user_left": return onDocLeft(m.data);
    case "disconnect": return setStatus("wait", m.data && m.data.reason || "disconnected");
    case "error": return console.warn("server error", m.error);
    default: return;
  }
}

function onConnected() {
  joinRoom(state.room);
  loadInbox();
  joinDoc();
}

function setStatus(kind, text) {
  const s = $("status");
  s.className = `status ${kind}`;
  s.textContent = text;
}

// ---- chat -------------------------------------------------------------------------------

function joinRoom(room) {
  state.members.clear();
  renderMembers();
  const since = state.positions.get(room);
  const subscribe = (pos) => {
    const data = { channel: room };
    if (pos) data.since = pos;
    send("subscribe", data, (r) => {
      if (r.type === "error") return system(`cannot join ${room}: ${r.error}`);
      if (pos && r.data.recovered === false) {
        // The past is gone (a restart without the store): start over from the history.
        state.positions.delete(room);
        return joinRoom(room);
      }
      send("presence.channel", { channel: room, members: true }, (p) => {
        if (p.type !== "presence.channel") return;
        for (const mem of p.data.members || []) state.members.set(mem.client, mem.user);
        renderMembers();
      });
    });
    send("subscribe", { channel: typingChannel(room) }, () => {});
  };
  if (since) return subscribe(since);
  // First visit (or a reload): show the history, then continue from where it ends.
  send("history", { channel: room, limit: 50 }, (h) => {
    if (h.type === "history") {
      for (const p of h.data.publications) onPublication(p);
      subscribe({ offset: h.data.offset, epoch: h.data.epoch });
    } else {
      subscribe(null);
    }
  });
}

function leaveRoom(room) {
  send("unsubscribe", { channel: room }, () => {});
  send("unsubscribe", { channel: typingChannel(room) }, () => {});
}

function typingChannel(room) {
  return "typing:" + room.slice(room.indexOf(":") + 1);
}

function onPublication(p) {
  if (p.channel.startsWith("typing:")) return onTyping(p);
  if (p.channel !== state.room) return;
  if (p.offset !== undefined) {
    const key = `${p.channel}@${p.epoch}@${p.offset}`;
    if (state.seen.has(key)) return;
    state.seen.add(key);
    state.positions.set(p.channel, { offset: p.offset, epoch: p.epoch });
  }
  const d = p.data || {};
  const li = document.createElement("li");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = String(d.user || "?");
  li.append(who, document.createTextNode(String(d.text || "")));
  if (p.offset !== undefined) li.dataset.offset = p.offset;
  $("messages").append(li);
  li.scrollIntoView({ block: "nearest" });
  clearTyping(d.user);
}

function system(text) {
  const li = document.createElement("li");
  li.className = "sys";
  li.textContent = text;
  $("messages").append(li);
}

function onJoin(m) {
  if (m.channel !== state.room) return;
  const known = [...state.members.values()].includes(m.data.user);
  state.members.set(m.data.client, m.data.user);
  renderMembers();
  if (!known && m.data.user !== state.user) system(`${m.data.user} joined`);
}

function onLeave(m) {
  if (m.channel !== state.room) return;
  state.members.delete(m.data.client);
  renderMembers();
  if (![...state.members.values()].includes(m.data.user)) system(`${m.data.user} left`);
}

function renderMembers() {
  const users = [...new Set(state.members.values())].sort();
  $("members").textContent = users.length ? `here: ${users.join(", ")}` : "";
}

function sendChat(text) {
  const data = { user: state.user, text };
  send("publish", { channel: state.room, data, idempotency_key: `${state.user}-${Date.now()}-${Math.random()}` }, (r) => {
    if (r.type === "error") system(`not sent: ${r.error}`);
  });
  // @name mentions become notifications in that user's inbox.
  for (const name of new Set((text.match(/@([A-Za-z0-9_.\-]{1,32})/g) || []).map((s) => s.slice(1)))) {
    if (name === state.user) continue;
    send("notifications.send", {
      user: name,
      type: "mention",
      title: `${state.user} mentioned you in ${state.room.slice(5)}`,
      body: text,
      data: { room: state.room },
    }, () => {});
  }
}

function onTyping(p) {
  const who = p.data && p.data.user;
  if (!who || who === state.user || typingChannel(state.room) !== p.channel) return;
  clearTimeout(state.typing.get(who));
  state.typing.set(who, setTimeout(() => clearTyping(who), 3000));
  renderTyping();
}

function clearTyping(who) {
  if (!state.typing.has(who)) return;
  clearTimeout(state.typing.get(who));
  state.typing.delete(who);
  renderTyping();
}

function renderTyping() {
  const names = [...state.typing.keys()];
  $("typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

function typed() {
  const now = Date.now();
  if (now - state.lastTyping < 1500) return;
  state.lastTyping = now;
  // The sender is excluded: only the others see "… is typing".
  send("publish", { channel: typingChannel(state.room), data: { user: state.user }, exclude_self: true });
}

// ---- notifications ----------------------------------------------------------------------

function loadInbox() {
  send("notifications.list", { limit: 20 }, (r) => {
    if (r.type !== "notifications") return;
    $("notifications").textContent = "";
    for (const n of r.data.items.slice().reverse()) addNotification(n, false);
    setUnread(r.data.unread);
  });
}

function addNotification(n, live) {
  if (document.querySelector(`#notifications li[data-id="${n.id}"]`)) return;
  const li = document.createElement("li");
  li.dataset.id = n.id;
  if (!n.read) li.className = "unread";
  li.textContent = `${n.title}${n.body ? ": " + n.body : ""}`;
  $("notifications").prepend(li);
  if (live && !n.read) setUnread(state.unread + 1);
}

function setUnread(n) {
  state.unread = n;
  $("unread").textContent = String(n);
}

function markAllRead() {
  send("notifications.read", { ids: "all" }, (r) => {
    if (r.type !== "notifications.marked") return;
    for (const li of document.querySelectorAll("#notifications li.unread")) li.className = "";
    setUnread(0);
  });
}

// ---- the shared document ----------------------------------------------------------------

function joinDoc() {
  send("doc.join", { doc: DOC }, (r) => {
    if (r.type !== "doc.joined") {
      $("doc-state").textContent = r.error || "unavailable";
      return;
    }
    state.ot = new OtClient(r.data.revision, sendEdit, applyRemote);
    setDocText(r.data.text || "", null);
    state.cursors.clear();
    for (const m of r.data.members || []) {
      const range = m.selection && m.selection.ranges && m.selection.ranges[0];
      if (range && m.user !== state.user) state.cursors.set(m.client, { user: m.user, index: range.head });
    }
    renderCursors();
    $("doc").disabled = false;
    renderDocState();
  });
}

function sendEdit(revision, op) {
  send("doc.edit", { doc: DOC, revision, op: op.toJSON() }, (r) => {
    if (r.type === "doc.ack") {
      state.ot.serverAck();
    } else {
      // Refused (it cannot be, unless the document moved on without us): start over.
      console.warn("edit refused", r.error);
      joinDoc();
    }
    renderDocState();
  });
  renderDocState();
}

function applyRemote(op) {
  const ta = $("doc");
  const sel = [ta.selectionStart, ta.selectionEnd];
  const next = op.apply(state.docText);
  for (const c of state.cursors.values()) c.index = op.transformIndex(c.index);
  setDocText(next, sel.map((i) => op.transformIndex(i)));
  renderCursors();
}

function setDocText(text, selection) {
  const ta = $("doc");
  state.docText = text;
  ta.value = text;
  if (selection && document.activeElement === ta) ta.setSelectionRange(selection[0], selection[1]);
}

function onLocalEdit() {
  if (!state.ot) return;
  const next = $("doc").value;
  const op = TextOperation.diff(state.docText, next);
  state.docText = next;
  state.ot.applyClient(op);
  for (const c of state.cursors.values()) c.index = op.transformIndex(c.index);
  sendCursor();
}

function onDocOp(d) {
  if (d.doc !== DOC || !state.ot) return;
  state.ot.applyServer(TextOperation.fromJSON(d.op));
  renderDocState();
}

let cursorTimer = null;
function sendCursor() {
  if (cursorTimer) return;
  cursorTimer = setTimeout(() => {
    cursorTimer = null;
    if (!state.ot || !state.ot.synced) return sendCursor();
    const ta = $("doc");
    send("doc.cursor", {
      doc: DOC,
      revision: state.ot.revision,
      selection: { ranges: [{ anchor: ta.selectionStart, head: ta.selectionEnd }] },
    });
  }, 150);
}

function onCursor(d) {
  if (d.doc !== DOC || !state.ot) return;
  const range = d.selection && d.selection.ranges && d.selection.ranges[0];
  if (!range) return state.cursors.delete(d.client);
  state.cursors.set(d.client, { user: d.user, index: state.ot.transformRemoteIndex(range.head) });
  renderCursors();
}

function onDocLeft(d) {
  for (const [k, c] of state.cursors) if (c.user === d.user) state.cursors.delete(k);
  renderCursors();
}

function renderCursors() {
  const parts = [...state.cursors.values()].map((c) => `${c.user} at ${c.index}`);
  $("cursors").textContent = parts.join(" · ");
}

function renderDocState() {
  if (!state.ot) return;
  $("doc-state").textContent = `revision ${state.ot.revision}${state.ot.synced ? "" : " (saving…)"}`;
}

// ---- page -------------------------------------------------------------------------------

function signIn(user, token) {
  state.user = user;
  state.token = token || null;
  state.stopped = false;
  sessionStorage.setItem("edge-ws-demo-user", user);
  if (token) sessionStorage.setItem("edge-ws-demo-token", token);
  $("signin").hidden = true;
  $("signout").hidden = false;
  $("app").hidden = false;
  $("room").value = state.room;
  connect();
}

$("signin").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("user").value.trim(), $("token").value.trim());
});

$("signout").addEventListener("click", () => {
  state.stopped = true;
  sessionStorage.removeItem("edge-ws-demo-user");
  sessionStorage.removeItem("edge-ws-demo-token");
  if (state.ws) state.ws.close(1000, "signed out");
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("app").hidden = true;
});

$("compose").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("text").value.trim();
  if (!t) return;
  sendChat(t);
  $("text").value = "";
});

$("text").addEventListener("input", typed);
$("room").addEventListener("change", () => {
  leaveRoom(state.room);
  state.room = $("room").value;
  localStorage.setItem(ROOM_KEY, state.room);
  $("messages").textContent = "";
  state.seen.clear();
  state.positions.delete(state.room);
  state.typing.clear();
  renderTyping();
  joinRoom(state.room);
});
$("mark-read").addEventListener("click", markAllRead);
$("doc").addEventListener("input", onLocalEdit);
$("doc").addEventListener("select", sendCursor);
$("doc").addEventListener("keyup", sendCursor);
$("doc").addEventListener("click", sendCursor);

// What the browser tests look at.
window.demo = {
  state,
  synced: () => state.ot !== null && state.ot.synced,
  docText: () => state.docText,
  messages: () => [...document.querySelectorAll("#messages li:not(.sys)")].map((li) => li.textContent),
};

// A reload keeps the session (the name, and the token if one was given).
const saved = sessionStorage.getItem("edge-ws-demo-user");
if (saved) {
  $("user").value = saved;
  signIn(saved, sessionStorage.getItem("edge-ws-demo-token"));
}
