//! Status codes and the caller's error struct.

use std::ffi::c_char;
use std::fmt;

use crate::controller::ControllerError;
use crate::engine::EngineError;

/// Success.
pub const AUTOSTANDBY_OK: u32 = 0;
/// A required pointer argument was NULL.
pub const AUTOSTANDBY_ERR_NULL_POINTER: u32 = 1;
/// An argument is out of range (an unknown enum value, a bad address family, ...).
pub const AUTOSTANDBY_ERR_INVALID_ARGUMENT: u32 = 2;
/// An input or output struct's `struct_size` is smaller than this library's struct.
pub const AUTOSTANDBY_ERR_STRUCT_SIZE: u32 = 3;
/// No instance is registered under the key.
pub const AUTOSTANDBY_ERR_NOT_FOUND: u32 = 4;
/// The key is already registered.
pub const AUTOSTANDBY_ERR_ALREADY_EXISTS: u32 = 5;
/// The policy is invalid; the message starts with `"<field>: "`.
pub const AUTOSTANDBY_ERR_INVALID_POLICY: u32 = 6;
/// A standby is executing for the instance.
pub const AUTOSTANDBY_ERR_STANDBY_IN_PROGRESS: u32 = 7;
/// `begin_standby`/`report_standby` for an instance with no outstanding standby.
pub const AUTOSTANDBY_ERR_NO_STANDBY_OUTSTANDING: u32 = 8;
/// The call is not available in the controller's mode.
pub const AUTOSTANDBY_ERR_WRONG_MODE: u32 = 9;
/// Missing privileges (CAP_NET_ADMIN, entering the network namespace).
pub const AUTOSTANDBY_ERR_PERMISSION: u32 = 10;
/// A system call failed.
pub const AUTOSTANDBY_ERR_IO: u32 = 11;
/// The library panicked; the handle is now poisoned.
pub const AUTOSTANDBY_ERR_PANIC: u32 = 12;
/// An earlier call panicked on this handle: only `autostandby_controller_free` is allowed.
pub const AUTOSTANDBY_ERR_POISONED: u32 = 13;
/// An address given for an instance already belongs to another instance.
pub const AUTOSTANDBY_ERR_ADDRESS_IN_USE: u32 = 14;
/// The controller is being freed.
pub const AUTOSTANDBY_ERR_SHUTDOWN: u32 = 15;
/// `autostandby_confirm` for an instance with no confirmation pending: a stale answer
/// (already answered, or cancelled by activity, a hold or an update). Nothing changed.
pub const AUTOSTANDBY_ERR_NO_CONFIRM_PENDING: u32 = 16;

/// Size of `autostandby_error.message`, NUL included.
pub const AUTOSTANDBY_ERROR_MESSAGE_LEN: usize = 256;

/// Details of a failed call, filled when the caller passes a non-NULL pointer.
///
/// On success the struct is left untouched. `message` is always NUL-terminated UTF-8,
/// truncated at a character boundary when longer than the buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct autostandby_error {
    /// The status code the call returned.
    pub code: u32,
    /// A human-readable description.
    pub message: [c_char; AUTOSTANDBY_ERROR_MESSAGE_LEN],
}

/// A failure on its way to the caller: a status code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FfiError {
    /// One of the `AUTOSTANDBY_ERR_*` codes.
    pub code: u32,
    /// The message copied into `autostandby_error.message`.
    pub message: String,
}

impl FfiError {
    /// An error with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `AUTOSTANDBY_ERR_NULL_POINTER` naming the argument.
    pub fn null(arg: &str) -> Self {
        Self::new(AUTOSTANDBY_ERR_NULL_POINTER, format!("{arg} is NULL"))
    }

    /// `AUTOSTANDBY_ERR_INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(AUTOSTANDBY_ERR_INVALID_ARGUMENT, message)
    }
}

impl fmt::Display for FfiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl From<EngineError> for FfiError {
    fn from(err: EngineError) -> Self {
        let code = match &err {
            EngineError::NotFound(_) => AUTOSTANDBY_ERR_NOT_FOUND,
            EngineError::AlreadyRegistered(_) => AUTOSTANDBY_ERR_ALREADY_EXISTS,
            EngineError::AddressInUse { .. } => AUTOSTANDBY_ERR_ADDRESS_IN_USE,
            EngineError::InvalidPolicy(policy) => {
                return Self::new(
                    AUTOSTANDBY_ERR_INVALID_POLICY,
                    format!("{}: {policy}", policy.field()),
                );
            }
            EngineError::StandbyInProgress => AUTOSTANDBY_ERR_STANDBY_IN_PROGRESS,
            EngineError::NoStandbyOutstanding(_) => AUTOSTANDBY_ERR_NO_STANDBY_OUTSTANDING,
            EngineError::NoConfirmPending(_) => AUTOSTANDBY_ERR_NO_CONFIRM_PENDING,
            EngineError::UnknownResync(_)
            | EngineError::UnknownLookup(_)
            | EngineError::InvalidAddress(_)
            | EngineError::InvalidQuery(_) => AUTOSTANDBY_ERR_INVALID_ARGUMENT,
        };
        Self::new(code, err.to_string())
    }
}

impl From<ControllerError> for FfiError {
    fn from(err: ControllerError) -> Self {
        let code = match &err {
            ControllerError::Engine(engine) => return engine.clone().into(),
            ControllerError::WrongMode(_) => AUTOSTANDBY_ERR_WRONG_MODE,
            ControllerError::Shutdown => AUTOSTANDBY_ERR_SHUTDOWN,
            ControllerError::Permission(_) => AUTOSTANDBY_ERR_PERMISSION,
            ControllerError::Io(_) => AUTOSTANDBY_ERR_IO,
            ControllerError::InvalidArgument(_) => AUTOSTANDBY_ERR_INVALID_ARGUMENT,
        };
        Self::new(code, err.to_string())
    }
}

/// Copies `text` into a C buffer, NUL-terminated, cut at a UTF-8 character boundary.
pub(crate) fn copy_str(dst: &mut [c_char], text: &str) {
    let Some(room) = dst.len().checked_sub(1) else {
        return;
    };
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    for (d, s) in dst.iter_mut().zip(&text.as_bytes()[..end]) {
        *d = *s as c_char;
    }
    dst[end] = 0;
}

/// Writes `error` to the caller's error struct, if it gave one.
///
/// # Safety
/// `err` is NULL or points to writable memory for one `autostandby_error`.
pub(crate) unsafe fn write_error(err: *mut autostandby_error, error: &FfiError) {
    // SAFETY: the caller guarantees `err` is NULL or valid for writes.
    if let Some(out) = unsafe { err.as_mut() } {
        out.code = error.code;
        copy_str(&mut out.message, &error.message);
    }
}

/// The text of a status code, static and NUL-terminated; NULL for an unknown code.
pub(crate) fn status_text(code: u32) -> Option<&'static str> {
    Some(match code {
        AUTOSTANDBY_OK => "ok\0",
        AUTOSTANDBY_ERR_NULL_POINTER => "null pointer\0",
        AUTOSTANDBY_ERR_INVALID_ARGUMENT => "invalid argument\0",
        AUTOSTANDBY_ERR_STRUCT_SIZE => "struct size too small\0",
        AUTOSTANDBY_ERR_NOT_FOUND => "instance not found\0",
        AUTOSTANDBY_ERR_ALREADY_EXISTS => "instance already registered\0",
        AUTOSTANDBY_ERR_INVALID_POLICY => "invalid policy\0",
        AUTOSTANDBY_ERR_STANDBY_IN_PROGRESS => "standby in progress\0",
        AUTOSTANDBY_ERR_NO_STANDBY_OUTSTANDING => "no standby outstanding\0",
        AUTOSTANDBY_ERR_WRONG_MODE => "wrong controller mode\0",
        AUTOSTANDBY_ERR_PERMISSION => "permission denied\0",
        AUTOSTANDBY_ERR_IO => "I/O error\0",
        AUTOSTANDBY_ERR_PANIC => "internal panic\0",
        AUTOSTANDBY_ERR_POISONED => "controller poisoned by an earlier panic\0",
        AUTOSTANDBY_ERR_ADDRESS_IN_USE => "address in use by another instance\0",
        AUTOSTANDBY_ERR_SHUTDOWN => "controller shutting down\0",
        AUTOSTANDBY_ERR_NO_CONFIRM_PENDING => "no confirmation pending\0",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_str_truncates_at_a_char_boundary_and_terminates() {
        let mut buf = [1 as c_char; 5];
        copy_str(&mut buf, "abcé");
        // "abcé" is 5 bytes; 4 fit, but the 4th would split "é".
        assert_eq!(buf.map(|c| c as u8), [b'a', b'b', b'c', 0, 1]);
        copy_str(&mut buf, "");
        assert_eq!(buf[0], 0);
    }

    #[test]
    fn every_code_has_a_text() {
        for code in 0..=16 {
            assert!(
                status_text(code).is_some_and(|t| t.ends_with('\0')),
                "{code}"
            );
        }
        assert_eq!(status_text(17), None);
    }
}
