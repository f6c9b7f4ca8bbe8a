//! `Connection::poll_event_from` (messages decoded straight from received slices) against
//! `Connection::poll_event` (every byte through the read buffer): the same stream, cut at
//! arbitrary points, must give the same events, errors, close frames and final state.

use bytes::BytesMut;
use edge_ws_protocol::codec::SliceDecoded;
use edge_ws_protocol::connection::State;
use edge_ws_protocol::{
    CloseCode, Connection, ConnectionConfig, Decoder, DecoderConfig, Event, Message, ProtocolError,
    Role,
};
use proptest::prelude::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn config() -> ConnectionConfig {
    ConnectionConfig {
        role: Role::Server,
        limits: DecoderConfig {
            max_frame_size: 20_000,
            max_message_size: 30_000,
            max_fragments: 8,
        },
        heartbeat_interval: None,
        heartbeat_timeout: 100,
        idle_timeout: None,
        close_timeout: 100,
    }
}

/// One frame as a client sends it: `b0` as given, the shortest length form, masked with
/// `key` (or not).
fn frame(b0: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let m = if key.is_some() { 0x80 } else { 0 };
    let mut out = vec![b0];
    if payload.len() < 126 {
        out.push(m | payload.len() as u8);
    } else if payload.len() <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    let mut body = payload.to_vec();
    if let Some(k) = key {
        out.extend_from_slice(&k);
        for (i, b) in body.iter_mut().enumerate() {
            *b ^= k[i & 3];
        }
    }
    out.extend_from_slice(&body);
    out
}

/// What a test stream is made of.
#[derive(Debug, Clone)]
enum Part {
    Binary(usize),
    Text(usize),
    /// A text message in two frames.
    Fragmented(usize, usize),
    Ping(usize),
    Pong,
    /// Text with an invalid byte at this position (clamped to the length).
    BadText(usize, usize),
    /// A frame without a mask (a server must fail it, 1002).
    Unmasked(usize),
    /// A frame over the frame limit (1009).
    TooBig,
    Close,
}

/// Valid UTF-8 of at most `len` bytes (the multi-byte tail cut back to a boundary).
fn text_upto(len: usize) -> Vec<u8> {
    let s: String = "aé€😀".chars().cycle().take(len).collect();
    let mut end = len.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.as_bytes()[..end].to_vec()
}

fn wire(parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        match *p {
            Part::Binary(n) => {
                let body: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
                out.extend(frame(0x82, &body, Some(KEY)));
            }
            Part::Text(n) => out.extend(frame(0x81, &text_upto(n), Some(KEY))),
            Part::Fragmented(a, b) => {
                out.extend(frame(0x01, &text_upto(a), Some(KEY)));
                out.extend(frame(0x80, &text_upto(b), Some(KEY)));
            }
            Part::Ping(n) => out.extend(frame(0x89, &vec![b'p'; n.min(125)], Some(KEY))),
            Part::Pong => out.extend(frame(0x8A, b"", Some(KEY))),
            Part::BadText(n, at) => {
                let mut body = text_upto(n.max(1));
                let at = at % body.len();
                body[at] = 0xff;
                out.extend(frame(0x81, &body, Some(KEY)));
            }
            Part::Unmasked(n) => out.extend(frame(0x82, &vec![1; n], None)),
            Part::TooBig => out.extend(frame(0x82, &vec![2; 20_001], Some(KEY))),
            Part::Close => {
                let mut body = 1000u16.to_be_bytes().to_vec();
                body.extend_from_slice(b"bye");
                out.extend(frame(0x88, &body, Some(KEY)));
            }
        }
    }
    out
}

/// Everything observable about a decoded stream.
#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<Result<Event, ProtocolError>>,
    transmits: Vec<Vec<u8>>,
    state: State,
    close_code: Option<CloseCode>,
}

/// How [`run`] feeds a connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// Every byte through the read buffer (`poll_event`).
    Buffer,
    /// `poll_event_from`.
    Slices,
    /// `poll_view_from` first, `poll_event_from` for what it leaves.
    Views,
}

/// Feeds `wire` cut at `cuts` (chunk lengths, cycled) along `path`; `close_at`: the chunk
/// before which the server closes (1000).
fn run(wire: &[u8], cuts: &[usize], path: Path, close_at: Option<usize>) -> Outcome {
    run_counting(wire, cuts, path, close_at).0
}

/// [`run`], and how many messages came out as views.
fn run_counting(
    wire: &[u8],
    cuts: &[usize],
    path: Path,
    close_at: Option<usize>,
) -> (Outcome, usize) {
    let slices = path != Path::Buffer;
    let mut views = 0;
    let cfg = config();
    let mut conn = Connection::new(0);
    let mut scratch: Decoder = cfg.decoder();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut transmits = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < wire.len() {
        if close_at == Some(i) {
            let _ = conn.close(&cfg, CloseCode(1000), "", 1);
        }
        let n = cuts[i % cuts.len()].clamp(1, wire.len() - pos);
        // A receive buffer of its own: the slice path unmasks in place.
        let mut received = wire[pos..pos + n].to_vec();
        let mut input: &mut [u8] = &mut received;
        pos += n;
        i += 1;
        if !slices {
            buf.extend_from_slice(input);
            input = &mut [];
        }
        // Bounded: every call consumes input or reports an event.
        for _ in 0..10_000 {
            if path == Path::Views {
                match conn.poll_view_from(&cfg, &scratch, &buf, &mut input, 1) {
                    Some(Ok(view)) => {
                        views += 1;
                        events.push(Ok(Event::Message(view.to_message())));
                        continue;
                    }
                    Some(Err(e)) => {
                        events.push(Err(e));
                        continue;
                    }
                    None => {}
                }
                // As the engine does: a receive taken whole as views needs no further poll.
                if input.is_empty() && buf.is_empty() && conn.input_done(false) {
                    break;
                }
            }
            let r = if slices {
                conn.poll_event_from(&cfg, &mut scratch, &mut buf, &mut input, 1)
            } else {
                conn.poll_event(&cfg, &mut scratch, &mut buf, 1)
            };
            match r {
                Ok(None) => break,
                Ok(Some(e)) => events.push(Ok(e)),
                Err(e) => events.push(Err(e)),
            }
        }
        assert!(input.is_empty(), "Ok(None) leaves no input behind");
        while let Some(t) = conn.poll_transmit(&cfg, true, None) {
            transmits.push(t.bytes.to_vec());
        }
        assert!(scratch.is_idle(), "the scratch is handed back idle");
    }
    let outcome = Outcome {
        events,
        transmits,
        state: conn.state(),
        close_code: conn.close_code(),
    };
    (outcome, views)
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        6 => (0usize..200).prop_map(Part::Binary),
        3 => (3000usize..12_000).prop_map(Part::Binary),
        4 => (0usize..200).prop_map(Part::Text),
        2 => (3000usize..9000).prop_map(Part::Text),
        1 => ((0usize..300), (0usize..300)).prop_map(|(a, b)| Part::Fragmented(a, b)),
        1 => (0usize..20).prop_map(Part::Ping),
        1 => Just(Part::Pong),
    ]
}

fn ending() -> impl Strategy<Value = Option<Part>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Part::Close)),
        1 => ((1usize..5000), any::<usize>()).prop_map(|(n, at)| Some(Part::BadText(n, at))),
        1 => (0usize..50).prop_map(|n| Some(Part::Unmasked(n))),
        1 => Just(Some(Part::TooBig)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn slices_decode_like_the_read_buffer(
        mut parts in proptest::collection::vec(part(), 1..12),
        end in ending(),
        tail in proptest::collection::vec(part(), 0..3),
        cuts in proptest::collection::vec(1usize..6000, 1..8),
        close_at in proptest::option::weighted(0.2, 0usize..6),
    ) {
        if let Some(e) = end {
            parts.push(e);
        }
        parts.extend(tail);
        let wire = wire(&parts);
        let buffered = run(&wire, &cuts, Path::Buffer, close_at);
        let sliced = run(&wire, &cuts, Path::Slices, close_at);
        prop_assert_eq!(&sliced, &buffered);
        let viewed = run(&wire, &cuts, Path::Views, close_at);
        prop_assert_eq!(&viewed, &buffered);
        // The stream decoded at all (not two empty outcomes).
        prop_assert!(!buffered.events.is_empty() || close_at.is_some());
    }
}

/// Messages come out of the slice path with their payload intact, whatever the cuts, and
/// every frame of the fast case is taken without a read buffer.
#[test]
fn slices_need_no_read_buffer_for_plain_frames() {
    let cfg = config();
    let parts = [
        Part::Binary(64),
        Part::Text(100),
        Part::Binary(4096),
        Part::Text(5000),
        Part::Binary(0),
    ];
    let wire = wire(&parts);
    // Where each frame ends on the wire.
    let ends: Vec<usize> = parts
        .iter()
        .scan(0, |end, p| {
            *end += self::wire(core::slice::from_ref(p)).len();
            Some(*end)
        })
        .collect();
    for cut in [1, 3, 7, 64, 100, 4096, 4104, wire.len()] {
        let mut conn = Connection::new(0);
        let mut scratch = cfg.decoder();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut fed = 0;
        for chunk in wire.chunks(cut) {
            let mut received = chunk.to_vec();
            let mut input: &mut [u8] = &mut received;
            while let Some(e) = conn
                .poll_event_from(&cfg, &mut scratch, &mut buf, &mut input, 1)
                .unwrap()
            {
                got.push(e);
            }
            // Only a header cut short waits in the buffer, never payload.
            assert!(buf.len() < 14, "cut {cut}: {} bytes buffered", buf.len());
            fed += chunk.len();
            // A receive that ends between frames leaves the connection holding nothing; one
            // that ends inside the 4 KiB frame's payload holds that frame.
            if ends.contains(&fed) {
                assert!(
                    !conn.holds_heap(),
                    "cut {cut}: heap held at a frame boundary"
                );
            } else if fed > ends[1] + 8 && fed < ends[2] {
                assert!(
                    conn.holds_heap(),
                    "cut {cut}: a half-received frame is not held"
                );
            }
        }
        let lens: Vec<(bool, usize)> = got
            .iter()
            .map(|e| match e {
                Event::Message(Message::Text(b)) => (true, b.len()),
                Event::Message(Message::Binary(b)) => (false, b.len()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let want = [
            (false, 64),
            (true, text_upto(100).len()),
            (false, 4096),
            (true, text_upto(5000).len()),
            (false, 0),
        ];
        assert_eq!(lens, want, "cut {cut}");
        match &got[2] {
            Event::Message(Message::Binary(b)) => {
                assert!(b.iter().enumerate().all(|(i, &x)| x == (i * 7 + 3) as u8));
            }
            _ => unreachable!(),
        }
        match &got[3] {
            Event::Message(m) => assert_eq!(m.as_text().map(str::len), Some(lens[3].1)),
            _ => unreachable!(),
        }
    }
}

/// The decoder's slice path leaves what it does not take untouched.
#[test]
fn decode_slice_leaves_other_frames_to_the_buffer() {
    let mut d = Decoder::new(Role::Server, DecoderConfig::default());
    for w in [
        frame(0x89, b"ping", Some(KEY)),
        frame(0x01, b"frag", Some(KEY)),
        frame(0xC1, b"compressed?", Some(KEY)),
        frame(0x82, b"unmasked", None),
        frame(0x81, &[b'a', 0xff], Some(KEY)),
        // A header cut short, and a large frame with little of it here.
        frame(0x82, &[0; 300], Some(KEY))[..3].to_vec(),
        frame(0x82, &[0; 20_000], Some(KEY))[..100].to_vec(),
    ] {
        let mut received = w.clone();
        let mut input: &mut [u8] = &mut received;
        let mut frame = None;
        assert_eq!(
            d.decode_slice(&mut frame, &mut input),
            Ok(SliceDecoded::Buffer)
        );
        assert!(frame.is_none());
        // Nothing consumed, nothing changed (invalid text is masked back as it came).
        assert_eq!(&*input, &w[..]);
        assert!(d.is_idle());
    }
}

/// Whole plain frames in a receive come out as views (no allocation); control frames,
/// fragments and frames cut by the end of a receive take the other paths, with the same events.
/// `input_done` says there is nothing to poll only when polling would find nothing, and
/// frees the box the slice path kept.
#[test]
fn input_done_only_when_nothing_is_left_to_poll() {
    let cfg = config();
    let mut scratch = cfg.decoder();
    let mut buf = BytesMut::new();
    let mut conn = Connection::new(0);
    assert!(conn.input_done(false), "a fresh connection");
    assert!(
        !conn.input_done(true),
        "bytes in the read buffer are for polling"
    );
    // A frame half-received on the slice path: its box holds it, so there is more to do.
    let whole = frame(0x82, &[7u8; 3000], Some(KEY));
    let mut first = whole[..1000].to_vec();
    let mut input: &mut [u8] = &mut first;
    assert_eq!(
        conn.poll_event_from(&cfg, &mut scratch, &mut buf, &mut input, 1),
        Ok(None)
    );
    assert!(conn.holds_heap());
    assert!(!conn.input_done(false), "a frame half-received");
    let mut rest = whole[1000..].to_vec();
    rest.extend(frame(0x82, b"next", Some(KEY)));
    let mut input: &mut [u8] = &mut rest;
    let got = conn.poll_event_from(&cfg, &mut scratch, &mut buf, &mut input, 1);
    assert!(matches!(got, Ok(Some(Event::Message(Message::Binary(ref b)))) if b.len() == 3000));
    // The next frame comes as a view, and the box kept while the input lasted goes.
    assert!(matches!(
        conn.poll_view_from(&cfg, &scratch, &buf, &mut input, 1),
        Some(Ok(_))
    ));
    assert!(input.is_empty() && conn.holds_heap());
    assert!(conn.input_done(false));
    assert!(!conn.holds_heap(), "the empty box is freed");
    // A peer's close frame leaves the close event to poll for.
    let mut close = frame(0x88, &1000u16.to_be_bytes(), Some(KEY));
    let mut input: &mut [u8] = &mut close;
    let got = conn.poll_event_from(&cfg, &mut scratch, &mut buf, &mut input, 1);
    assert!(matches!(got, Ok(Some(Event::Closed { .. }))), "{got:?}");
    assert!(!conn.input_done(false), "closed: not open any more");
}

/// The rest of a receive after a frame for the read buffer goes through the read buffer.
#[test]
fn whole_plain_frames_come_out_as_views() {
    let parts = [
        Part::Binary(64),
        Part::Text(100),
        Part::Binary(5000),
        Part::Text(0),
        Part::Ping(5),
        Part::Binary(64),
        Part::Fragmented(10, 10),
    ];
    let wire = wire(&parts);
    let buffered = run(&wire, &[wire.len()], Path::Buffer, None);
    let (viewed, views) = run_counting(&wire, &[wire.len()], Path::Views, None);
    assert_eq!(viewed, buffered);
    assert_eq!(views, 4, "the four plain frames");
    // Cut into single bytes, no frame is ever whole in one receive.
    let (viewed, views) = run_counting(&wire, &[1], Path::Views, None);
    assert_eq!(viewed, buffered);
    assert_eq!(views, 0);
    // A view's bytes are the payload, unmasked.
    let cfg = config();
    let mut conn = Connection::new(0);
    let scratch = cfg.decoder();
    let mut received = frame(0x82, b"hello view", Some(KEY));
    received.extend(frame(0x81, "h\u{e9}llo".as_bytes(), Some(KEY)));
    let mut input: &mut [u8] = &mut received;
    let a = conn.poll_view_from(&cfg, &scratch, &[], &mut input, 1);
    assert_eq!(
        a,
        Some(Ok(edge_ws_protocol::MessageView::Binary(b"hello view")))
    );
    let b = conn.poll_view_from(&cfg, &scratch, &[], &mut input, 1);
    assert_eq!(
        b,
        Some(Ok(edge_ws_protocol::MessageView::Text("h\u{e9}llo")))
    );
    assert!(input.is_empty());
    // Something already in the read buffer goes first: no view jumps ahead of it.
    let mut more = frame(0x82, b"x", Some(KEY));
    let mut input: &mut [u8] = &mut more;
    assert_eq!(
        conn.poll_view_from(&cfg, &scratch, &[0x82], &mut input, 1),
        None
    );
    assert_eq!(input.len(), 7, "nothing consumed");
}
