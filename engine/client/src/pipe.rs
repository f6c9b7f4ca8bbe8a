//! The state shared by the application's handles and the connection's task: the bounded write
//! queue, the bounded read queue, the close request and the end.
//!
//! One mutex guards it all; every critical section is a few field updates (no encoding, no
//! I/O, no allocation beyond a queue push). Wakers are woken after the lock is released.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use edge_ws_protocol::CloseCode;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::message::{CloseInfo, Message, Stats};

/// Shared between the handles and the task (behind an `Arc`).
#[derive(Debug)]
pub(crate) struct Pipe {
    state: Mutex<State>,
    /// Bytes that may wait to be written before sends wait.
    pub(crate) write_limit: usize,
    /// Messages and bytes that may wait in the read queue before the task stops reading.
    pub(crate) read_messages: usize,
    pub(crate) read_bytes: usize,
    /// Reconnecting client: wakes the supervisor when a close is requested or the last handle
    /// goes (it may be sleeping between attempts, with no connection task to wake).
    pub(crate) supervisor: Notify,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    // --- outgoing ---
    /// Messages not yet taken by the task.
    pub(crate) out: VecDeque<Message>,
    /// Payload bytes in `out`.
    pub(crate) out_bytes: usize,
    /// Bytes the task holds: messages taken but not yet encoded, encoded frames not yet
    /// written.
    pub(crate) driver_bytes: usize,
    space_waiters: Vec<Waker>,
    flush_waiters: Vec<Waker>,
    /// Sends fail with this once set (closing, closed).
    pub(crate) send_error: Option<Error>,
    /// `close(code, reason)` waiting for the task.
    pub(crate) close_request: Option<(CloseCode, String)>,
    // --- incoming ---
    pub(crate) inq: VecDeque<Message>,
    pub(crate) in_bytes: usize,
    /// The task stopped reading for lack of room: wake it when the application takes one.
    pub(crate) read_blocked: bool,
    recv_waker: Option<Waker>,
    /// Set once nothing more will be received: the error (if any) is handed out once, after
    /// the queued messages.
    end: Option<Option<Error>>,
    // --- lifecycle ---
    pub(crate) driver_waker: Option<Waker>,
    pub(crate) senders: usize,
    pub(crate) receiver: bool,
    pub(crate) close_info: Option<CloseInfo>,
    // --- application pings ---
    /// Pings asked for by `ping()`; each is numbered by this count.
    pub(crate) pings_requested: u64,
    /// The highest ping number the task has queued for the socket.
    pub(crate) pings_taken: u64,
    /// The highest ping number the server answered with a pong.
    pub(crate) pongs_matched: u64,
    pong_waiters: Vec<Waker>,
    /// Set when the connection (or the reconnecting client) is over and its socket closed.
    outcome: Option<Result<()>>,
    done_waiters: Vec<Waker>,
    pub(crate) stats: Stats,
}

impl State {
    /// Bytes waiting to be written.
    pub(crate) fn queued(&self) -> usize {
        self.out_bytes + self.driver_bytes
    }

    /// Whether every handle is gone (nobody can send, receive or close any more).
    pub(crate) fn abandoned(&self) -> bool {
        self.senders == 0 && !self.receiver
    }

    /// Wakers of senders waiting for room or a flush, when there is room now / nothing left.
    pub(crate) fn take_writer_wakers(&mut self, limit: usize, out: &mut Vec<Waker>) {
        if self.queued() < limit || self.send_error.is_some() {
            out.append(&mut self.space_waiters);
        }
        if self.queued() == 0 || self.outcome.is_some() {
            out.append(&mut self.flush_waiters);
        }
    }

    /// Records the server's answer to ping `seq` (and every earlier one); the wakers of the
    /// pings it answers go to `out`.
    pub(crate) fn pong_matched(&mut self, seq: u64, out: &mut Vec<Waker>) {
        if seq > self.pongs_matched {
            self.pongs_matched = seq;
            out.append(&mut self.pong_waiters);
        }
    }

    /// The receiver's waker, to call after new messages were queued or the end was set.
    pub(crate) fn take_recv_waker(&mut self) -> Option<Waker> {
        self.recv_waker.take()
    }
}

fn register(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

impl Pipe {
    pub(crate) fn new(write_limit: usize, read_messages: usize, read_bytes: usize) -> Self {
        Pipe {
            state: Mutex::new(State {
                senders: 1,
                receiver: true,
                ..State::default()
            }),
            write_limit,
            read_messages,
            read_bytes,
            supervisor: Notify::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_driver(&self, st: &mut State) -> Option<Waker> {
        self.supervisor.notify_one();
        st.driver_waker.take()
    }

    fn push(&self, mut st: MutexGuard<'_, State>, msg: Message) {
        st.out_bytes += msg.len();
        st.out.push_back(msg);
        st.stats.messages_queued += 1;
        let w = st.driver_waker.take();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// `send`: queues `msg` once the write queue is under its limit.
    pub(crate) fn poll_send(
        &self,
        cx: &Context<'_>,
        msg: &mut Option<Message>,
    ) -> Poll<Result<()>> {
        let mut st = self.lock();
        if let Some(e) = &st.send_error {
            return Poll::Ready(Err(e.clone()));
        }
        if st.queued() >= self.write_limit {
            register(&mut st.space_waiters, cx);
            return Poll::Pending;
        }
        if let Some(m) = msg.take() {
            self.push(st, m);
        }
        Poll::Ready(Ok(()))
    }

    /// `try_send`: queues `msg` or fails at once.
    /// `try_send` that hands the message back when it is refused.
    pub(crate) fn try_send_back(&self, msg: Message) -> std::result::Result<(), (Error, Message)> {
        let st = self.lock();
        if let Some(e) = &st.send_error {
            return Err((e.clone(), msg));
        }
        if st.queued() >= self.write_limit {
            return Err((Error::WouldBlock, msg));
        }
        self.push(st, msg);
        Ok(())
    }

    pub(crate) fn try_send(&self, msg: Message) -> Result<()> {
        let st = self.lock();
        if let Some(e) = &st.send_error {
            return Err(e.clone());
        }
        if st.queued() >= self.write_limit {
            return Err(Error::WouldBlock);
        }
        self.push(st, msg);
        Ok(())
    }

    /// `Sink::poll_ready`.
    pub(crate) fn poll_ready(&self, cx: &Context<'_>) -> Poll<Result<()>> {
        let mut st = self.lock();
        if let Some(e) = &st.send_error {
            return Poll::Ready(Err(e.clone()));
        }
        if st.queued() >= self.write_limit {
            register(&mut st.space_waiters, cx);
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// `Sink::start_send`: queues `msg` without looking at the limit (`poll_ready` did).
    pub(crate) fn start_send(&self, msg: Message) -> Result<()> {
        let st = self.lock();
        if let Some(e) = &st.send_error {
            return Err(e.clone());
        }
        self.push(st, msg);
        Ok(())
    }

    /// `Sink::poll_flush`: ready once everything queued has been written to the socket.
    pub(crate) fn poll_flush(&self, cx: &Context<'_>) -> Poll<Result<()>> {
        let mut st = self.lock();
        if let Some(outcome) = &st.outcome {
            return Poll::Ready(outcome.clone());
        }
        if st.queued() == 0 {
            return Poll::Ready(Ok(()));
        }
        register(&mut st.flush_waiters, cx);
        Poll::Pending
    }

    /// Bytes waiting to be written.
    pub(crate) fn buffered(&self) -> usize {
        self.lock().queued()
    }

    /// Asks for the close handshake (once); later sends fail with [`Error::Closed`].
    pub(crate) fn request_close(&self, code: CloseCode, reason: &str) {
        let mut st = self.lock();
        if st.send_error.is_none() {
            st.send_error = Some(Error::Closed);
        }
        if st.close_request.is_none() && st.outcome.is_none() {
            st.close_request = Some((code, reason.to_owned()));
        }
        let mut wakers = std::mem::take(&mut st.pong_waiters);
        st.take_writer_wakers(self.write_limit, &mut wakers);
        let w = self.wake_driver(&mut st);
        drop(st);
        wake_all(wakers);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Ready with the outcome once the connection (or the reconnecting client) is over.
    pub(crate) fn poll_done(&self, cx: &Context<'_>) -> Poll<Result<()>> {
        let mut st = self.lock();
        if let Some(outcome) = &st.outcome {
            return Poll::Ready(outcome.clone());
        }
        register(&mut st.done_waiters, cx);
        Poll::Pending
    }

    /// `ping()`: asks the task for a ping; its number, or why none can be sent.
    pub(crate) fn request_ping(&self) -> Result<u64> {
        let mut st = self.lock();
        if let Some(e) = &st.send_error {
            return Err(e.clone());
        }
        st.pings_requested += 1;
        let seq = st.pings_requested;
        let w = self.wake_driver(&mut st);
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        Ok(seq)
    }

    /// Ready once the server answered ping `seq`, or with the error once the connection is
    /// closing or over.
    pub(crate) fn poll_pong(&self, cx: &Context<'_>, seq: u64) -> Poll<Result<()>> {
        let mut st = self.lock();
        if st.pongs_matched >= seq {
            return Poll::Ready(Ok(()));
        }
        if let Some(outcome) = &st.outcome {
            return Poll::Ready(Err(outcome.clone().err().unwrap_or(Error::Closed)));
        }
        if let Some(e) = &st.send_error {
            return Poll::Ready(Err(e.clone()));
        }
        register(&mut st.pong_waiters, cx);
        Poll::Pending
    }

    /// `recv`: the next message, then the error that ended the connection (if any), then
    /// `None`.
    pub(crate) fn poll_recv(&self, cx: &Context<'_>) -> Poll<Option<Result<Message>>> {
        let mut st = self.lock();
        if let Some(m) = st.inq.pop_front() {
            st.in_bytes -= m.len();
            let w = if st.read_blocked {
                st.read_blocked = false;
                st.driver_waker.take()
            } else {
                None
            };
            drop(st);
            if let Some(w) = w {
                w.wake();
            }
            return Poll::Ready(Some(Ok(m)));
        }
        match &mut st.end {
            Some(e) => Poll::Ready(e.take().map(Err)),
            None => {
                match &st.recv_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.recv_waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// Whether the connection is closing or over (sends are refused).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().send_error.is_some()
    }

    pub(crate) fn close_info(&self) -> Option<CloseInfo> {
        self.lock().close_info.clone()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.lock().stats
    }

    pub(crate) fn add_sender(&self) {
        self.lock().senders += 1;
    }

    pub(crate) fn drop_sender(&self) {
        let mut st = self.lock();
        st.senders -= 1;
        if st.abandoned() {
            let w = self.wake_driver(&mut st);
            drop(st);
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    pub(crate) fn drop_receiver(&self) {
        let mut st = self.lock();
        st.receiver = false;
        // Nobody will read these: count them and let the task read on.
        st.stats.dropped_unread += st.inq.len() as u64;
        st.inq.clear();
        st.in_bytes = 0;
        let w = self.wake_driver(&mut st);
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// The end: no more messages in or out. `outcome` is what `close` reports; its error
    /// (if any) is what `recv` hands out after the queued messages, and, with
    /// `sends_see_error` (the reconnecting client), what later sends fail with (else
    /// [`Error::Closed`]). Messages still queued for sending are dropped and counted as
    /// `unsent`.
    pub(crate) fn finish(&self, outcome: Result<()>, sends_see_error: bool) {
        let mut st = self.lock();
        if st.outcome.is_some() {
            return;
        }
        st.stats.unsent += st.out.len() as u64;
        st.out.clear();
        st.out_bytes = 0;
        st.driver_bytes = 0;
        if st.send_error.is_none() {
            let e = outcome.clone().err().filter(|_| sends_see_error);
            st.send_error = Some(e.unwrap_or(Error::Closed));
        }
        st.end = Some(outcome.clone().err());
        st.outcome = Some(outcome);
        let mut wakers = std::mem::take(&mut st.done_waiters);
        wakers.append(&mut st.pong_waiters);
        st.take_writer_wakers(self.write_limit, &mut wakers);
        wakers.extend(st.recv_waker.take());
        drop(st);
        wake_all(wakers);
    }
}
