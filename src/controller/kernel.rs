//! Kernel mode: the engine thread and the conntrack observer threads.

use std::sync::Arc;

use super::{ControllerConfig, ControllerError, Shared};

/// The threads of a kernel-mode controller.
#[derive(Debug)]
pub(crate) struct KernelRuntime {}

impl KernelRuntime {
    /// Opens the sockets and starts the threads.
    pub(crate) fn start(
        _shared: Arc<Shared>,
        _config: &ControllerConfig,
    ) -> Result<Self, ControllerError> {
        Err(ControllerError::Io(
            "kernel mode is not available in this build yet".into(),
        ))
    }

    /// Tells the engine thread that deadlines or the address set may have changed.
    pub(crate) fn rearm(&self) {}

    /// Stops and joins every thread.
    pub(crate) fn stop(&mut self) {}
}
