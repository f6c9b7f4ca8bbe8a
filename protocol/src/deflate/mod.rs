//! permessage-deflate (RFC 7692): negotiation and per-message (de)compression.
