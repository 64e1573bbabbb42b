//! Failure kinds that a caller (and finally `main`) branches on to choose the exit code.
//!
//! Everything else travels as `anyhow::Error` with context; only these few kinds are typed,
//! because scripts act on the exit code.

/// Exit codes, stable and documented in the README.
pub mod exit {
    /// Everything loaded.
    pub const OK: i32 = 0;
    /// The run failed: bad data, a connector error, an unreachable server.
    pub const FAILED: i32 = 1;
    /// The command line, project file, config, catalog or state file is unusable.
    pub const CONFIG: i32 = 2;
    /// Some streams (or pipelines) loaded and committed their state, others failed.
    pub const PARTIAL: i32 = 3;
    /// Another run of the same pipeline holds the state lock.
    pub const LOCKED: i32 = 4;
    /// Interrupted by a signal (Ctrl-C); committed state is kept.
    pub const INTERRUPTED: i32 = 130;
}

/// A failure whose kind decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The user's configuration is unusable; nothing was run.
    #[error("{0}")]
    Config(String),
    /// The state lock is held by another run.
    #[error("{0}")]
    Locked(String),
    /// Some streams failed; the others committed.
    #[error("{0}")]
    Partial(String),
    /// The run was interrupted by a signal.
    #[error("interrupted")]
    Interrupted,
}

/// Shorthand for a configuration error.
pub fn config_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure::Config(msg.into()))
}

/// The exit code for an error: the first typed [`Failure`] in its chain, else [`exit::FAILED`].
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return match f {
                Failure::Config(_) => exit::CONFIG,
                Failure::Locked(_) => exit::LOCKED,
                Failure::Partial(_) => exit::PARTIAL,
                Failure::Interrupted => exit::INTERRUPTED,
            };
        }
    }
    exit::FAILED
}

/// True when the error is a broken pipe on stdout (`ferry tap … | head`), which is not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_found_through_context() {
        let err = Err::<(), _>(config_error("bad"))
            .context("loading ferry.yml")
            .unwrap_err();
        assert_eq!(exit_code(&err), exit::CONFIG);
        assert_eq!(exit_code(&anyhow::anyhow!("x")), exit::FAILED);
    }
}
