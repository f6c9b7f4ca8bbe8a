//! The connection manager: authentication, limits, middleware, JSON routing, rate limits.
