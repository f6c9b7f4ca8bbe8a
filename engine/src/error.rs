//! Why an engine could not start.

use crate::runtime::RuntimeError;

/// Errors starting the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The runtime could not start (bind failure, core that does not exist, io_uring setup).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}
