//! A table of malformed inputs and the exact error (and close code) each one gets.

use bytes::BytesMut;
use edge_ws_protocol::deflate::DeflateParams;
use edge_ws_protocol::{CloseCode, Decoder, DecoderConfig, ProtocolError, Role};

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n <= 65535 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

fn run(role: Role, config: DecoderConfig, deflate: bool, wire: &[u8]) -> Result<(), ProtocolError> {
    let mut d = Decoder::new(role, config);
    if deflate {
        d.set_deflate(&DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        });
    }
    let mut buf = BytesMut::from(wire);
    while d.decode(&mut buf)?.is_some() {}
    Ok(())
}

fn small() -> DecoderConfig {
    DecoderConfig {
        max_frame_size: 1000,
        max_message_size: 2000,
        max_fragments: 4,
    }
}

/// (name, decoder role, deflate negotiated, wire bytes, expected error, expected close code)
type Case = (&'static str, Role, bool, Vec<u8>, ProtocolError, u16);

#[test]
fn malformed_inputs_get_the_right_close_code() {
    use ProtocolError::*;
    let big = vec![b'a'; 1500];
    let cases: Vec<Case> = vec![
        (
            "reserved opcode 3",
            Role::Server,
            false,
            masked(0x83, b""),
            ReservedOpcode(3),
            1002,
        ),
        (
            "reserved opcode 0xB",
            Role::Server,
            false,
            masked(0x8B, b""),
            ReservedOpcode(0xB),
            1002,
        ),
        (
            "RSV1 without extension",
            Role::Server,
            false,
            masked(0xC1, b"x"),
            ReservedBits,
            1002,
        ),
        (
            "RSV2",
            Role::Server,
            false,
            masked(0xA1, b"x"),
            ReservedBits,
            1002,
        ),
        (
            "RSV3 even with deflate",
            Role::Server,
            true,
            masked(0x91, b"x"),
            ReservedBits,
            1002,
        ),
        (
            "RSV1 on ping with deflate",
            Role::Server,
            true,
            masked(0xC9, b""),
            CompressedContinuation,
            1002,
        ),
        (
            "RSV1 on continuation",
            Role::Server,
            true,
            [masked(0x01, b"a"), masked(0xC0, b"b")].concat(),
            CompressedContinuation,
            1002,
        ),
        (
            "fragmented ping",
            Role::Server,
            false,
            masked(0x09, b""),
            FragmentedControl,
            1002,
        ),
        (
            "ping of 126 bytes",
            Role::Server,
            false,
            masked(0x89, &[0; 126]),
            ControlTooLong,
            1002,
        ),
        (
            "unmasked frame to server",
            Role::Server,
            false,
            vec![0x81, 0x01, b'a'],
            UnmaskedFrame,
            1002,
        ),
        (
            "masked frame to client",
            Role::Client,
            false,
            masked(0x81, b"a"),
            MaskedFrame,
            1002,
        ),
        (
            "continuation first",
            Role::Server,
            false,
            masked(0x80, b"a"),
            UnexpectedContinuation,
            1002,
        ),
        (
            "new text inside fragmented",
            Role::Server,
            false,
            [masked(0x01, b"a"), masked(0x81, b"b")].concat(),
            ExpectedContinuation,
            1002,
        ),
        (
            "64-bit length with top bit",
            Role::Server,
            false,
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            LengthTopBit,
            1002,
        ),
        (
            "close with 1 byte",
            Role::Server,
            false,
            masked(0x88, &[3]),
            CloseOneByte,
            1002,
        ),
        (
            "close code 1005",
            Role::Server,
            false,
            masked(0x88, &[0x03, 0xED]),
            InvalidCloseCode(1005),
            1002,
        ),
        (
            "close code 999",
            Role::Server,
            false,
            masked(0x88, &[0x03, 0xE7]),
            InvalidCloseCode(999),
            1002,
        ),
        (
            "close code 5000",
            Role::Server,
            false,
            masked(0x88, &[0x13, 0x88]),
            InvalidCloseCode(5000),
            1002,
        ),
        (
            "close reason invalid UTF-8",
            Role::Server,
            false,
            masked(0x88, &[0x03, 0xE8, 0xFF]),
            InvalidUtf8,
            1007,
        ),
        (
            "invalid UTF-8 text",
            Role::Server,
            false,
            masked(0x81, b"a\xffb"),
            InvalidUtf8,
            1007,
        ),
        (
            "truncated UTF-8 text",
            Role::Server,
            false,
            masked(0x81, b"a\xe2\x82"),
            InvalidUtf8,
            1007,
        ),
        (
            "invalid UTF-8 across fragments",
            Role::Server,
            false,
            [masked(0x01, b"\xce"), masked(0x80, b"\xff")].concat(),
            InvalidUtf8,
            1007,
        ),
        (
            "frame over limit",
            Role::Server,
            false,
            masked(0x82, &big),
            FrameTooLarge,
            1009,
        ),
        (
            "message over limit",
            Role::Server,
            false,
            [
                masked(0x02, &big[..900]),
                masked(0x00, &big[..900]),
                masked(0x80, &big[..900]),
            ]
            .concat(),
            MessageTooLarge,
            1009,
        ),
        (
            "too many fragments",
            Role::Server,
            false,
            [
                masked(0x02, b"a"),
                masked(0x00, b"a"),
                masked(0x00, b"a"),
                masked(0x00, b"a"),
                masked(0x80, b"a"),
            ]
            .concat(),
            TooManyFragments,
            1009,
        ),
        (
            "garbage deflate",
            Role::Server,
            true,
            masked(0xC2, &[0xFF, 0xFF, 0xFF, 0xFF]),
            InvalidDeflate,
            1002,
        ),
    ];
    for (name, role, deflate, wire, want, code) in cases {
        let got = run(role, small(), deflate, &wire);
        assert_eq!(got, Err(want), "{name}");
        assert_eq!(want.close_code(), CloseCode(code), "{name}");
    }
}

#[test]
fn invalid_utf8_fails_before_the_frame_is_complete() {
    // Header announces 100 bytes; only the first 3 (invalid) arrive.
    let full = masked(0x81, &[b"a\xff".as_slice(), &[b'b'; 98]].concat());
    let mut d = Decoder::new(Role::Server, DecoderConfig::default());
    let mut buf = BytesMut::from(&full[..2 + 4 + 3]);
    assert_eq!(d.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn inflate_bomb_is_cut_off_at_the_message_limit() {
    use flate2::{Compress, Compression, FlushCompress};
    // 8 MiB of zeros compresses to a few KiB.
    let zeros = vec![0u8; 8 << 20];
    let mut c = Compress::new(Compression::best(), false);
    let mut compressed = Vec::with_capacity(64 << 10);
    c.compress_vec(&zeros, &mut compressed, FlushCompress::Sync)
        .unwrap();
    assert!(compressed.ends_with(&[0, 0, 0xff, 0xff]));
    compressed.truncate(compressed.len() - 4);
    assert!(compressed.len() < 64 << 10);
    let cfg = DecoderConfig {
        max_frame_size: 1 << 20,
        max_message_size: 1 << 20,
        max_fragments: 16,
    };
    let err = run(Role::Server, cfg, true, &masked(0xC2, &compressed)).unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooLarge);
    assert_eq!(err.close_code(), CloseCode::TOO_BIG);
}

#[test]
fn data_after_close_is_ignored() {
    let wire = [masked(0x88, &[0x03, 0xE8]), masked(0x81, b"late")].concat();
    let mut d = Decoder::new(Role::Server, DecoderConfig::default());
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(
        d.decode(&mut buf),
        Ok(Some(edge_ws_protocol::Message::Close(Some(_))))
    ));
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert!(d.is_closed());
}

/// A deflate stream of `chunks` MiB of zeros: one MiB compressed after a full flush (so the
/// compressor forgets its window and every chunk compresses to the same bytes), repeated.
fn zero_bomb(chunks: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::best(), false);
    let mut one = Vec::with_capacity(64 << 10);
    c.compress_vec(&vec![0u8; 1 << 20], &mut one, FlushCompress::Full)
        .unwrap();
    one.repeat(chunks)
}

#[test]
fn inflate_bomb_is_refused_while_its_frame_is_still_arriving() {
    // 1 GiB of zeros in one compressed frame of about 1 MiB, fed 4 KiB at a time: the decoder
    // must refuse it once the output passes the 1 MiB limit, long before the frame is whole.
    let bomb = zero_bomb(1024);
    assert!(
        bomb.len() < 2 << 20,
        "compressed bomb is {} bytes",
        bomb.len()
    );
    let wire = masked(0xC2, &bomb);
    let cfg = DecoderConfig {
        max_frame_size: 16 << 20,
        max_message_size: 1 << 20,
        max_fragments: 16,
    };
    let mut d = Decoder::new(Role::Server, cfg);
    d.set_deflate(&DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    });
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let err = loop {
        assert!(fed < wire.len(), "the whole bomb was accepted");
        let end = (fed + 4096).min(wire.len());
        buf.extend_from_slice(&wire[fed..end]);
        fed = end;
        match d.decode(&mut buf) {
            Ok(None) => {
                // Inflated input is consumed: the read buffer never holds the compressed frame.
                assert!(buf.len() <= 4096, "read buffer holds {} bytes", buf.len());
            }
            Ok(Some(m)) => panic!("bomb decoded to a message of {} bytes", m.payload().len()),
            Err(e) => break e,
        }
    };
    assert_eq!(err, ProtocolError::MessageTooLarge);
    // 1 MiB of zeros is ~1 KiB compressed: refused within a few KiB of input.
    assert!(
        fed <= 16 << 10,
        "refused only after {fed} bytes of the frame"
    );
}

#[test]
fn compressed_fragments_stream_and_the_limit_spans_them() {
    // Four fragments of 1 MiB zeros each (compressed): under a 3 MiB limit the fourth fails;
    // under 4 MiB the message decodes whole.
    let one = zero_bomb(1);
    let mut wire = masked(0x42, &one); // binary, RSV1, not FIN
    wire.extend(masked(0x00, &one));
    wire.extend(masked(0x00, &one));
    wire.extend(masked(0x80, &one)); // FIN continuation
    let params = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    for (limit, ok) in [(3 << 20, false), (4 << 20, true)] {
        let cfg = DecoderConfig {
            max_frame_size: 1 << 20,
            max_message_size: limit,
            max_fragments: 16,
        };
        let mut d = Decoder::new(Role::Server, cfg);
        d.set_deflate(&params);
        // One byte at a time through the first fragment's header, then in 1000-byte pieces.
        let mut buf = BytesMut::new();
        let mut got = None;
        let mut result = Ok(());
        for piece in wire.chunks(1000) {
            buf.extend_from_slice(piece);
            match d.decode(&mut buf) {
                Ok(Some(m)) => got = Some(m),
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if ok {
            assert_eq!(result, Ok(()));
            let m = got.expect("message decoded");
            assert_eq!(m.payload().len(), 4 << 20);
            assert!(m.payload().iter().all(|&b| b == 0));
        } else {
            assert_eq!(result, Err(ProtocolError::MessageTooLarge));
        }
    }
}
