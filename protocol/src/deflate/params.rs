//! Configuration and `Sec-WebSocket-Extensions` negotiation of permessage-deflate
//! (RFC 7692 §5, §7.1).

use core::fmt::Write as _;

use crate::extension::ExtensionOffer;

/// The extension token of permessage-deflate.
pub const EXTENSION_NAME: &str = "permessage-deflate";

const SERVER_NO_CONTEXT_TAKEOVER: &str = "server_no_context_takeover";
const CLIENT_NO_CONTEXT_TAKEOVER: &str = "client_no_context_takeover";
const SERVER_MAX_WINDOW_BITS: &str = "server_max_window_bits";
const CLIENT_MAX_WINDOW_BITS: &str = "client_max_window_bits";

/// The smallest LZ77 window RFC 7692 allows (256 bytes).
pub const MIN_WINDOW_BITS: u8 = 8;
/// The largest LZ77 window RFC 7692 allows (32 KiB); also the meaning of an absent parameter.
pub const MAX_WINDOW_BITS: u8 = 15;

/// What one endpoint accepts (server) or offers (client) for permessage-deflate.
///
/// The same struct serves both roles; each field's doc says what it means on either side.
/// Window-bit values outside `8..=15` are clamped into that range.
#[derive(Debug, Clone)]
pub struct DeflateConfig {
    /// Whether to negotiate permessage-deflate at all. Default `true`.
    pub enabled: bool,
    /// Only data messages whose payload is **longer** than this many bytes are compressed; the
    /// rest go out uncompressed (RSV1 clear). Default `128`: below that the bytes saved rarely
    /// pay for deflate's CPU and per-message framing cost. Applied by the encoder, not by
    /// [`Compressor`](super::Compressor).
    pub threshold: usize,
    /// Deflate level `0..=9` for our outgoing messages (values above 9 count as 9). Default `1`:
    /// the fastest level that still searches for LZ77 matches; on typical WebSocket traffic
    /// (JSON, text) it gets most of level 6's ratio for a fraction of the CPU.
    pub level: u32,
    /// Server: include `server_no_context_takeover` in the answer even when the client did not
    /// offer it (allowed by RFC 7692 §7.1.1.1), so our compressor resets after every message.
    /// Client: request it in the offer (the server's answer must then acknowledge it).
    /// Default `false`. Without context takeover our compressor's state (hundreds of KiB with
    /// a 15-bit window) exists only while a message is compressed.
    pub server_no_context_takeover: bool,
    /// Server: include `client_no_context_takeover` in the answer even when the client did not
    /// offer it (allowed by RFC 7692 §7.1.1.2). Client: offer it, i.e. promise not to use
    /// context takeover ourselves. Default `false`. Without context takeover the peer's
    /// inflater state (its 32 KiB window and tables) exists only while a message is inflated.
    pub client_no_context_takeover: bool,
    /// Server: the largest window our compressor uses (the answer carries `server_max_window_bits`
    /// when this is below 15, or the client's smaller request). Client: when below 15, request
    /// `server_max_window_bits=N` in the offer. Default `15`.
    pub server_max_window_bits: u8,
    /// Server: the window we ask of a client that offered `client_max_window_bits`. Client: the
    /// largest window our compressor uses (offered as the parameter's value when below 15).
    /// Default `15`.
    pub client_max_window_bits: u8,
    /// Hard cap on the inflated size of one message; a message that would inflate past it fails
    /// with [`MessageTooLarge`](crate::ProtocolError::MessageTooLarge) (close 1009) as soon as
    /// the cap is crossed, without inflating further. Default 64 MiB. The decoder may pass its
    /// own, smaller message limit instead.
    pub max_inflated_message: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            enabled: true,
            threshold: 128,
            level: 1,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
            max_inflated_message: 64 << 20,
        }
    }
}

fn clamp_bits(bits: u8) -> u8 {
    bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS)
}

/// The parameters agreed for one connection.
///
/// `server_*` fields govern the server→client direction, `client_*` fields the client→server
/// direction. So the server compresses with (`server_max_window_bits`,
/// `server_no_context_takeover`) and inflates with the `client_*` pair; the client mirrors that.
/// The [`Default`] value is what a bare `permessage-deflate` answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compression context after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after every message.
    pub client_no_context_takeover: bool,
    /// Base-2 log of the server's LZ77 window, `8..=15`.
    pub server_max_window_bits: u8,
    /// Base-2 log of the client's LZ77 window, `8..=15`.
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    fn default() -> Self {
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

impl DeflateParams {
    /// The wire form of the server's answer, e.g.
    /// `permessage-deflate; server_no_context_takeover; client_max_window_bits=10`.
    ///
    /// Window bits of 15 are left out (absence means 15). [`negotiate_server`] keeps the result
    /// valid for the offer it accepted: it never sets `client_max_window_bits` below 15 unless
    /// the client offered that parameter, and it answers a `server_max_window_bits` request
    /// with a value below 15 so that the parameter is present as RFC 7692 §7.1.2.1 requires.
    pub fn to_header_value(&self) -> String {
        let bits = |b: u8| (b < MAX_WINDOW_BITS).then_some(b);
        header(
            self.server_no_context_takeover,
            self.client_no_context_takeover,
            bits(self.server_max_window_bits),
            bits(self.client_max_window_bits).map(Some),
        )
    }
}

/// Writes a `permessage-deflate` element: the flags, then the window sizes. For
/// `client_max_window_bits`, `Some(None)` is the bare parameter (a client's offer without a
/// value), `Some(Some(n))` carries `n`, `None` leaves it out.
fn header(
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: Option<Option<u8>>,
) -> String {
    let mut s = String::with_capacity(96);
    s.push_str(EXTENSION_NAME);
    if server_no_context_takeover {
        s.push_str("; ");
        s.push_str(SERVER_NO_CONTEXT_TAKEOVER);
    }
    if client_no_context_takeover {
        s.push_str("; ");
        s.push_str(CLIENT_NO_CONTEXT_TAKEOVER);
    }
    if let Some(bits) = server_max_window_bits {
        let _ = write!(s, "; {SERVER_MAX_WINDOW_BITS}={bits}");
    }
    match client_max_window_bits {
        Some(Some(bits)) => {
            let _ = write!(s, "; {CLIENT_MAX_WINDOW_BITS}={bits}");
        }
        Some(None) => {
            s.push_str("; ");
            s.push_str(CLIENT_MAX_WINDOW_BITS);
        }
        None => {}
    }
    s
}

/// Why a server's permessage-deflate answer is unacceptable to the client; the client must fail
/// the connection (RFC 7692 §5).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// The answer names an extension we did not offer (or permessage-deflate while we did not
    /// offer it).
    #[error("server accepted extension {0:?} that was not offered")]
    UnexpectedExtension(String),
    /// More than one permessage-deflate entry in the answer.
    #[error("more than one permessage-deflate entry in the server's answer")]
    DuplicateAnswer,
    /// A parameter RFC 7692 does not define.
    #[error("unknown permessage-deflate parameter {0:?}")]
    UnknownParam(String),
    /// The same parameter twice.
    #[error("duplicate permessage-deflate parameter {0:?}")]
    DuplicateParam(String),
    /// A missing, superfluous or malformed value (window bits must be `8`..`15`).
    #[error("invalid value for permessage-deflate parameter {0:?}")]
    InvalidValue(String),
    /// `client_max_window_bits` in the answer although our offer did not include it.
    #[error("client_max_window_bits in the answer but not in the offer")]
    ClientMaxWindowBitsNotOffered,
    /// `server_max_window_bits` missing from the answer or larger than we requested.
    #[error("server_max_window_bits {answered:?} does not honour the requested {requested}")]
    ServerMaxWindowBits {
        /// What we asked for.
        requested: u8,
        /// What the server answered (`None`: absent).
        answered: Option<u8>,
    },
    /// We requested `server_no_context_takeover` and the answer lacks it.
    #[error("server_no_context_takeover requested but not in the answer")]
    MissingServerNoContextTakeover,
}

/// A parameter-level fault in one permessage-deflate offer or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamFault {
    Unknown,
    Duplicate,
    InvalidValue,
}

/// The parameters of one permessage-deflate offer or answer, syntactically validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RawParams {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// `1*DIGIT` without leading zeroes, within `8..=15` (RFC 7692 §7.1.2).
fn parse_bits(v: &str) -> Option<u8> {
    match v {
        "8" => Some(8),
        "9" => Some(9),
        "10" => Some(10),
        "11" => Some(11),
        "12" => Some(12),
        "13" => Some(13),
        "14" => Some(14),
        "15" => Some(15),
        _ => None,
    }
}

impl RawParams {
    /// Parses the parameters of one entry; on failure returns the fault and the offending name.
    fn parse(params: &[(String, Option<String>)]) -> Result<Self, (ParamFault, &str)> {
        let mut p = RawParams::default();
        for (name, value) in params {
            let fault = |f| (f, name.as_str());
            let value = value.as_deref();
            if name.eq_ignore_ascii_case(SERVER_NO_CONTEXT_TAKEOVER) {
                if p.server_no_context_takeover {
                    return Err(fault(ParamFault::Duplicate));
                }
                if value.is_some() {
                    return Err(fault(ParamFault::InvalidValue));
                }
                p.server_no_context_takeover = true;
            } else if name.eq_ignore_ascii_case(CLIENT_NO_CONTEXT_TAKEOVER) {
                if p.client_no_context_takeover {
                    return Err(fault(ParamFault::Duplicate));
                }
                if value.is_some() {
                    return Err(fault(ParamFault::InvalidValue));
                }
                p.client_no_context_takeover = true;
            } else if name.eq_ignore_ascii_case(SERVER_MAX_WINDOW_BITS) {
                if p.server_max_window_bits.is_some() {
                    return Err(fault(ParamFault::Duplicate));
                }
                let bits = value.and_then(parse_bits);
                p.server_max_window_bits = Some(bits.ok_or(fault(ParamFault::InvalidValue))?);
            } else if name.eq_ignore_ascii_case(CLIENT_MAX_WINDOW_BITS) {
                if p.client_max_window_bits.is_some() {
                    return Err(fault(ParamFault::Duplicate));
                }
                let bits = match value {
                    None => None,
                    Some(v) => Some(parse_bits(v).ok_or(fault(ParamFault::InvalidValue))?),
                };
                p.client_max_window_bits = Some(bits);
            } else {
                return Err(fault(ParamFault::Unknown));
            }
        }
        Ok(p)
    }
}

fn is_pmd(offer: &ExtensionOffer) -> bool {
    offer.name.eq_ignore_ascii_case(EXTENSION_NAME)
}

/// Server side: picks the first acceptable permessage-deflate offer of the client.
///
/// `offers` is the client's whole `Sec-WebSocket-Extensions` list; entries of other extensions
/// are skipped. An offer with an unknown or duplicate parameter or an invalid value (window
/// bits outside `8..=15` or with leading zeroes, a value on a `*_no_context_takeover`, no value
/// on `server_max_window_bits`) is declined and the next one considered (RFC 7692 §5). Returns
/// `None` when deflate is disabled or no offer is acceptable; otherwise the agreed parameters,
/// whose [`DeflateParams::to_header_value`] is the answer to send.
///
/// Answer policy:
/// - `server_no_context_takeover`: when offered or `cfg.server_no_context_takeover`.
/// - `client_no_context_takeover`: when offered (the client promised it anyway, and saying so
///   lets nothing depend on context we would otherwise keep) or
///   `cfg.client_no_context_takeover`.
/// - `server_max_window_bits`: min(offered, `cfg.server_max_window_bits`); when the client
///   requested 15 and our config allows 15, we answer 14, because the parameter must appear in
///   the answer and 15 is written by omission. Not requested: `cfg.server_max_window_bits` (the
///   server may announce a smaller window unasked).
/// - `client_max_window_bits`: only when offered: min(offered value or 15,
///   `cfg.client_max_window_bits`); otherwise the client may use 15.
pub fn negotiate_server(offers: &[ExtensionOffer], cfg: &DeflateConfig) -> Option<DeflateParams> {
    if !cfg.enabled {
        return None;
    }
    let our_server_bits = clamp_bits(cfg.server_max_window_bits);
    let our_client_bits = clamp_bits(cfg.client_max_window_bits);
    offers
        .iter()
        .filter(|o| is_pmd(o))
        .find_map(|o| RawParams::parse(&o.params).ok())
        .map(|p| DeflateParams {
            server_no_context_takeover: p.server_no_context_takeover
                || cfg.server_no_context_takeover,
            client_no_context_takeover: p.client_no_context_takeover
                || cfg.client_no_context_takeover,
            server_max_window_bits: match p.server_max_window_bits {
                Some(asked) => asked.min(our_server_bits).min(MAX_WINDOW_BITS - 1),
                None => our_server_bits,
            },
            client_max_window_bits: match p.client_max_window_bits {
                Some(hint) => hint.unwrap_or(MAX_WINDOW_BITS).min(our_client_bits),
                None => MAX_WINDOW_BITS,
            },
        })
}

/// What the client offers, derived from its config; the reference for checking the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientOffer {
    enabled: bool,
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// `Some(n)`: we send `server_max_window_bits=n`.
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: we send `client_max_window_bits` without a value.
    client_max_window_bits: Option<Option<u8>>,
}

impl ClientOffer {
    fn from_config(cfg: &DeflateConfig) -> Self {
        let server_bits = clamp_bits(cfg.server_max_window_bits);
        let client_bits = clamp_bits(cfg.client_max_window_bits);
        ClientOffer {
            enabled: cfg.enabled,
            server_no_context_takeover: cfg.server_no_context_takeover,
            client_no_context_takeover: cfg.client_no_context_takeover,
            server_max_window_bits: (server_bits < MAX_WINDOW_BITS).then_some(server_bits),
            // Always offered: it costs nothing and lets the server ask for a smaller window
            // (we can honour any value, 8 included).
            client_max_window_bits: Some((client_bits < MAX_WINDOW_BITS).then_some(client_bits)),
        }
    }

    fn header_value(&self) -> String {
        if !self.enabled {
            return String::new();
        }
        header(
            self.server_no_context_takeover,
            self.client_no_context_takeover,
            self.server_max_window_bits,
            self.client_max_window_bits,
        )
    }

    fn accept(&self, answer: &[ExtensionOffer]) -> Result<Option<DeflateParams>, NegotiationError> {
        let mut found = None;
        for entry in answer {
            if !self.enabled || !is_pmd(entry) {
                return Err(NegotiationError::UnexpectedExtension(entry.name.clone()));
            }
            if found.is_some() {
                return Err(NegotiationError::DuplicateAnswer);
            }
            found = Some(entry);
        }
        let Some(entry) = found else {
            return Ok(None);
        };
        let p = RawParams::parse(&entry.params).map_err(|(fault, name)| {
            let name = name.to_owned();
            match fault {
                ParamFault::Unknown => NegotiationError::UnknownParam(name),
                ParamFault::Duplicate => NegotiationError::DuplicateParam(name),
                ParamFault::InvalidValue => NegotiationError::InvalidValue(name),
            }
        })?;

        if self.server_no_context_takeover && !p.server_no_context_takeover {
            return Err(NegotiationError::MissingServerNoContextTakeover);
        }
        if let Some(requested) = self.server_max_window_bits {
            match p.server_max_window_bits {
                Some(answered) if answered <= requested => {}
                answered => {
                    return Err(NegotiationError::ServerMaxWindowBits {
                        requested,
                        answered,
                    })
                }
            }
        }
        let client_bits = match (p.client_max_window_bits, self.client_max_window_bits) {
            (None, offered) => offered.flatten().unwrap_or(MAX_WINDOW_BITS),
            (Some(_), None) => return Err(NegotiationError::ClientMaxWindowBitsNotOffered),
            // In an answer the parameter must carry a value (RFC 7692 §7.1.2.2).
            (Some(None), Some(_)) => {
                return Err(NegotiationError::InvalidValue(
                    CLIENT_MAX_WINDOW_BITS.to_owned(),
                ))
            }
            // We promised to stay within our hint, whatever the server says.
            (Some(Some(answered)), Some(hint)) => answered.min(hint.unwrap_or(MAX_WINDOW_BITS)),
        };
        Ok(Some(DeflateParams {
            server_no_context_takeover: p.server_no_context_takeover,
            // Offering it is a promise to honour it even if the answer leaves it out (§7.1.1.2).
            client_no_context_takeover: p.client_no_context_takeover
                || self.client_no_context_takeover,
            server_max_window_bits: p.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
            client_max_window_bits: client_bits,
        }))
    }
}

/// Client side: the `Sec-WebSocket-Extensions` value to offer, built from `cfg`, e.g.
/// `permessage-deflate; client_max_window_bits`.
///
/// `client_max_window_bits` is always offered (with `cfg.client_max_window_bits` as its value
/// when below 15); `server_max_window_bits=N` only when `cfg.server_max_window_bits` is below
/// 15; the `*_no_context_takeover` parameters when the config asks. Returns an empty string
/// when deflate is disabled: send no header then.
pub fn client_offer(cfg: &DeflateConfig) -> String {
    ClientOffer::from_config(cfg).header_value()
}

/// Client side: checks the server's `Sec-WebSocket-Extensions` answer against what
/// [`client_offer`] offered for the same `cfg`.
///
/// `answer` is the server's whole extension list. Returns `Ok(Some(params))` when
/// permessage-deflate was agreed, `Ok(None)` when the server declined it (no entry), and an
/// error — the client must fail the connection — for an extension we did not offer, more than
/// one permessage-deflate entry, an unknown, duplicate or malformed parameter,
/// `client_max_window_bits` we did not offer, a missing or too large `server_max_window_bits`
/// we requested, or a missing `server_no_context_takeover` we requested.
pub fn client_accept(
    answer: &[ExtensionOffer],
    cfg: &DeflateConfig,
) -> Result<Option<DeflateParams>, NegotiationError> {
    ClientOffer::from_config(cfg).accept(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extension::parse_extensions;

    fn parse(s: &str) -> Vec<ExtensionOffer> {
        let mut v = Vec::new();
        parse_extensions(s, &mut v).unwrap();
        v
    }

    fn server(offer: &str, cfg: &DeflateConfig) -> Option<String> {
        negotiate_server(&parse(offer), cfg).map(|p| p.to_header_value())
    }

    fn server_default(offer: &str) -> Option<String> {
        server(offer, &DeflateConfig::default())
    }

    #[test]
    fn server_plain_offer() {
        let p = negotiate_server(&parse("permessage-deflate"), &DeflateConfig::default()).unwrap();
        assert_eq!(p, DeflateParams::default());
        assert_eq!(p.to_header_value(), "permessage-deflate");
    }

    #[test]
    fn server_client_max_window_bits_without_value() {
        let cfg = DeflateConfig {
            client_max_window_bits: 10,
            ..DeflateConfig::default()
        };
        let p =
            negotiate_server(&parse("permessage-deflate; client_max_window_bits"), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 10);
        assert_eq!(
            p.to_header_value(),
            "permessage-deflate; client_max_window_bits=10"
        );
        // Default config allows 15: the parameter may be (and is) left out.
        assert_eq!(
            server_default("permessage-deflate; client_max_window_bits").unwrap(),
            "permessage-deflate"
        );
        // The client's own hint is lower than ours: answer the hint.
        let p =
            negotiate_server(&parse("permessage-deflate; client_max_window_bits=9"), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 9);
    }

    #[test]
    fn server_never_limits_client_window_unoffered() {
        let cfg = DeflateConfig {
            client_max_window_bits: 9,
            ..DeflateConfig::default()
        };
        let p = negotiate_server(&parse("permessage-deflate"), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 15);
        assert!(!p.to_header_value().contains("client_max_window_bits"));
    }

    #[test]
    fn server_max_window_bits_is_honoured() {
        let p = negotiate_server(
            &parse("permessage-deflate; server_max_window_bits=10"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 10);
        assert_eq!(
            p.to_header_value(),
            "permessage-deflate; server_max_window_bits=10"
        );

        // Ours is smaller still.
        let cfg = DeflateConfig {
            server_max_window_bits: 9,
            ..DeflateConfig::default()
        };
        let p = negotiate_server(
            &parse("permessage-deflate; server_max_window_bits=12"),
            &cfg,
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 9);
        // Not asked, but our config limits it: announced anyway.
        let p = negotiate_server(&parse("permessage-deflate"), &cfg).unwrap();
        assert_eq!(
            p.to_header_value(),
            "permessage-deflate; server_max_window_bits=9"
        );

        // 8 is accepted (we then compress with stored blocks).
        let p = negotiate_server(
            &parse("permessage-deflate; server_max_window_bits=8"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 8);

        // A request of 15 still gets the parameter back.
        let h = server_default("permessage-deflate; server_max_window_bits=15").unwrap();
        assert_eq!(h, "permessage-deflate; server_max_window_bits=14");
    }

    #[test]
    fn server_no_context_takeover_offered_or_configured() {
        let p = negotiate_server(
            &parse("permessage-deflate; server_no_context_takeover"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(
            p.to_header_value(),
            "permessage-deflate; server_no_context_takeover"
        );

        let cfg = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        assert_eq!(
            server("permessage-deflate", &cfg).unwrap(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );

        let p = negotiate_server(
            &parse("permessage-deflate; client_no_context_takeover"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert!(p.client_no_context_takeover && !p.server_no_context_takeover);
    }

    #[test]
    fn server_declines_invalid_offers_and_takes_the_next() {
        let cases = [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=true",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=abc",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=abc",
        ];
        for bad in cases {
            assert_eq!(server_default(bad), None, "{bad}");
            let with_fallback = format!("{bad}, permessage-deflate; server_no_context_takeover");
            assert_eq!(
                server_default(&with_fallback).as_deref(),
                Some("permessage-deflate; server_no_context_takeover"),
                "{with_fallback}"
            );
        }
    }

    #[test]
    fn server_skips_other_extensions_and_takes_the_first_valid() {
        assert_eq!(
            server_default("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=11")
                .unwrap(),
            "permessage-deflate; server_max_window_bits=11"
        );
        assert_eq!(server_default("x-webkit-deflate-frame; foo=1"), None);
        assert_eq!(
            server_default(
                "permessage-deflate; server_max_window_bits=12, permessage-deflate; server_max_window_bits=9"
            )
            .unwrap(),
            "permessage-deflate; server_max_window_bits=12"
        );
        let disabled = DeflateConfig {
            enabled: false,
            ..DeflateConfig::default()
        };
        assert_eq!(server("permessage-deflate", &disabled), None);
    }

    #[test]
    fn client_offer_strings() {
        assert_eq!(
            client_offer(&DeflateConfig::default()),
            "permessage-deflate; client_max_window_bits"
        );
        let cfg = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 10,
            client_max_window_bits: 12,
            ..DeflateConfig::default()
        };
        assert_eq!(
            client_offer(&cfg),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        );
        let disabled = DeflateConfig {
            enabled: false,
            ..DeflateConfig::default()
        };
        assert_eq!(client_offer(&disabled), "");
        // The offer parses back and our own server accepts it.
        let offer = parse(&client_offer(&cfg));
        let agreed = negotiate_server(&offer, &DeflateConfig::default()).unwrap();
        assert_eq!(
            agreed,
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 10,
                client_max_window_bits: 12,
            }
        );
        // ...and its answer is accepted by the client.
        let answer = parse(&agreed.to_header_value());
        assert_eq!(client_accept(&answer, &cfg), Ok(Some(agreed)));
    }

    #[test]
    fn client_accepts_valid_answers() {
        let cfg = DeflateConfig::default();
        assert_eq!(client_accept(&[], &cfg), Ok(None));
        assert_eq!(
            client_accept(&parse("permessage-deflate"), &cfg),
            Ok(Some(DeflateParams::default()))
        );
        let p = client_accept(
            &parse(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=9; client_max_window_bits=8",
            ),
            &cfg,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p,
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 9,
                client_max_window_bits: 8,
            }
        );
        // Our hint caps our window even if the server allows more.
        let cfg = DeflateConfig {
            client_max_window_bits: 10,
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        let p = client_accept(
            &parse("permessage-deflate; client_max_window_bits=12"),
            &cfg,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.client_max_window_bits, 10);
        assert!(p.client_no_context_takeover);
    }

    #[test]
    fn client_rejects_invalid_answers() {
        let cfg = DeflateConfig::default();
        let err = |s: &str, cfg: &DeflateConfig| client_accept(&parse(s), cfg).unwrap_err();
        assert_eq!(
            err("permessage-deflate; foo", &cfg),
            NegotiationError::UnknownParam("foo".into())
        );
        assert_eq!(
            err(
                "permessage-deflate; server_max_window_bits=9; server_max_window_bits=9",
                &cfg
            ),
            NegotiationError::DuplicateParam("server_max_window_bits".into())
        );
        assert_eq!(
            err("permessage-deflate; client_max_window_bits", &cfg),
            NegotiationError::InvalidValue("client_max_window_bits".into())
        );
        assert_eq!(
            err("permessage-deflate; server_max_window_bits=16", &cfg),
            NegotiationError::InvalidValue("server_max_window_bits".into())
        );
        assert_eq!(
            err("permessage-deflate; client_no_context_takeover=1", &cfg),
            NegotiationError::InvalidValue("client_no_context_takeover".into())
        );
        assert_eq!(
            err("permessage-deflate, permessage-deflate", &cfg),
            NegotiationError::DuplicateAnswer
        );
        assert_eq!(
            err("permessage-deflate, x-foo", &cfg),
            NegotiationError::UnexpectedExtension("x-foo".into())
        );
        let disabled = DeflateConfig {
            enabled: false,
            ..DeflateConfig::default()
        };
        assert_eq!(
            err("permessage-deflate", &disabled),
            NegotiationError::UnexpectedExtension("permessage-deflate".into())
        );

        let asks = DeflateConfig {
            server_max_window_bits: 10,
            server_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        assert_eq!(
            err(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
                &asks
            ),
            NegotiationError::ServerMaxWindowBits {
                requested: 10,
                answered: Some(11)
            }
        );
        assert_eq!(
            err("permessage-deflate; server_no_context_takeover", &asks),
            NegotiationError::ServerMaxWindowBits {
                requested: 10,
                answered: None
            }
        );
        assert_eq!(
            err("permessage-deflate; server_max_window_bits=10", &asks),
            NegotiationError::MissingServerNoContextTakeover
        );
    }

    #[test]
    fn client_rejects_client_max_window_bits_not_offered() {
        // `client_offer` always offers the parameter; check the rule on an offer without it.
        let offer = ClientOffer {
            client_max_window_bits: None,
            ..ClientOffer::from_config(&DeflateConfig::default())
        };
        assert_eq!(offer.header_value(), "permessage-deflate");
        assert_eq!(
            offer.accept(&parse("permessage-deflate; client_max_window_bits=10")),
            Err(NegotiationError::ClientMaxWindowBitsNotOffered)
        );
        assert_eq!(
            offer.accept(&parse("permessage-deflate")),
            Ok(Some(DeflateParams::default()))
        );
    }
}
