//! permessage-deflate negotiation, both sides against each other.
//!
//! 1. Any client config's offer (`client_offer`), answered by any server config
//!    (`negotiate_server`, answer written with `to_header_value`), must be accepted by that
//!    client (`client_accept`) with exactly the parameters the server agreed; a declined offer
//!    (no answer) must give `Ok(None)`. Every agreed window is within `8..=15`.
//! 2. Arbitrary `Sec-WebSocket-Extensions` text: `parse_extensions` and `negotiate_server`
//!    never panic; whatever the server agrees to is in range and its answer parses back to
//!    exactly one permessage-deflate entry.

use arbitrary::Arbitrary;
use edge_ws_protocol::deflate::{
    client_accept, client_offer, negotiate_server, DeflateConfig, DeflateParams, EXTENSION_NAME,
};
use edge_ws_protocol::extension::parse_extensions;

#[derive(Arbitrary, Debug)]
struct Cfg {
    enabled: bool,
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: u8,
    client_max_window_bits: u8,
}

impl Cfg {
    fn config(&self) -> DeflateConfig {
        DeflateConfig {
            enabled: self.enabled,
            server_no_context_takeover: self.server_no_context_takeover,
            client_no_context_takeover: self.client_no_context_takeover,
            // Out-of-range values are clamped by the crate: keep some of them.
            server_max_window_bits: self.server_max_window_bits % 18,
            client_max_window_bits: self.client_max_window_bits % 18,
            ..DeflateConfig::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    client: Cfg,
    server: Cfg,
    /// Raw header text for part 2.
    raw: String,
}

fn in_range(p: &DeflateParams) {
    assert!((8..=15).contains(&p.server_max_window_bits), "{p:?}");
    assert!((8..=15).contains(&p.client_max_window_bits), "{p:?}");
}

fn parse(s: &str) -> Option<Vec<edge_ws_protocol::extension::ExtensionOffer>> {
    let mut v = Vec::new();
    parse_extensions(s, &mut v).ok().map(|()| v)
}

/// The target: checks one input, panicking on any failed check.
pub fn run(input: Input) {
    let client = input.client.config();
    let server = input.server.config();

    // 1. Our client against our server.
    let offer = client_offer(&client);
    assert_eq!(offer.is_empty(), !client.enabled);
    let offers = parse(&offer).expect("our offer must parse");
    let agreed = negotiate_server(&offers, &server);
    if !client.enabled || !server.enabled {
        assert_eq!(agreed, None, "agreed without both sides enabled");
    }
    if client.enabled && server.enabled {
        assert!(
            agreed.is_some(),
            "our server declined our client's offer {offer:?}"
        );
    }
    match agreed {
        Some(p) => {
            in_range(&p);
            let answer = p.to_header_value();
            let answers = parse(&answer).expect("our answer must parse");
            assert_eq!(
                client_accept(&answers, &client),
                Ok(Some(p)),
                "offer {offer:?}, answer {answer:?}"
            );
        }
        None => assert_eq!(client_accept(&[], &client), Ok(None)),
    }

    // 2. Arbitrary offers.
    if let Some(offers) = parse(&input.raw) {
        if let Some(p) = negotiate_server(&offers, &server) {
            in_range(&p);
            let answers = parse(&p.to_header_value()).expect("answer must parse");
            assert_eq!(answers.len(), 1);
            assert!(answers[0].name.eq_ignore_ascii_case(EXTENSION_NAME));
        }
    }
}

// --- Seed corpus (`fuzz-stable --write-seeds`) ----------------------------------------------

crate::encode_struct!(Cfg {
    enabled, server_no_context_takeover, client_no_context_takeover, server_max_window_bits ;
    client_max_window_bits
});
crate::encode_struct!(Input { client, server ; raw });

fn cfg(enabled: bool, no_context_takeover: bool, server_bits: u8, client_bits: u8) -> Cfg {
    Cfg {
        enabled,
        server_no_context_takeover: no_context_takeover,
        client_no_context_takeover: no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    }
}

fn case(client: Cfg, server: Cfg, raw: &str) -> Input {
    Input {
        client,
        server,
        raw: raw.into(),
    }
}

/// Offers from browsers and other clients, parameters in and out of range, malformed text.
pub fn seeds() -> Vec<(&'static str, Input)> {
    let on = || cfg(true, false, 15, 15);
    vec![
        ("plain-offer", case(on(), on(), "permessage-deflate")),
        (
            "browser-offer",
            case(on(), on(), "permessage-deflate; client_max_window_bits"),
        ),
        (
            "windows-10-and-12",
            case(
                cfg(true, false, 10, 12),
                cfg(true, false, 15, 11),
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=12",
            ),
        ),
        (
            "no-context-takeover",
            case(
                cfg(true, true, 15, 15),
                cfg(true, true, 9, 9),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
        ),
        (
            "quoted-value",
            case(
                on(),
                on(),
                "permessage-deflate; client_max_window_bits=\"10\"",
            ),
        ),
        (
            "out-of-range-windows",
            case(
                cfg(true, false, 17, 0),
                cfg(true, false, 7, 16),
                "permessage-deflate; server_max_window_bits=7",
            ),
        ),
        (
            "duplicate-parameter",
            case(
                on(),
                on(),
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            ),
        ),
        (
            "fallback-offers",
            case(
                on(),
                cfg(true, false, 12, 15),
                "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=16, \
                 permessage-deflate",
            ),
        ),
        (
            "server-disabled",
            case(on(), cfg(false, false, 15, 15), "permessage-deflate"),
        ),
        ("client-disabled", case(cfg(false, true, 8, 8), on(), "")),
        (
            "windows-8",
            case(
                cfg(true, false, 8, 8),
                cfg(true, false, 8, 8),
                "permessage-deflate; server_max_window_bits=8; client_max_window_bits=8",
            ),
        ),
        (
            "unknown-parameter-and-junk",
            case(on(), on(), "permessage-deflate; foo=bar;; , ;"),
        ),
        (
            "case-and-whitespace",
            case(
                on(),
                on(),
                "PerMessage-Deflate ;\tclient_max_window_bits = 9 ,x",
            ),
        ),
    ]
}
