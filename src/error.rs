//! The library's error type: a libvirt error number, the libvirt error domain
//! it is reported under, and a human-readable message. The core returns
//! `Result<_, Error>`; the C boundary turns it into the thread-local last error.

/// The subset of libvirt's `virErrorNumber` values this library reports.
/// The numbers are libvirt's ABI and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorCode {
    /// `VIR_ERR_INTERNAL_ERROR`: a bug or a broken invariant.
    InternalError = 1,
    /// `VIR_ERR_NO_SUPPORT`: a function or feature not supported.
    NoSupport = 3,
    /// `VIR_ERR_INVALID_ARG`: a bad argument.
    InvalidArg = 8,
    /// `VIR_ERR_OPERATION_FAILED`: an operation that failed while running.
    OperationFailed = 9,
    /// `VIR_ERR_XML_ERROR`: XML that cannot be parsed or is not valid.
    XmlError = 27,
    /// `VIR_ERR_NO_DOMAIN`: a domain that does not exist.
    NoDomain = 42,
    /// `VIR_ERR_OPERATION_INVALID`: an operation not valid in the current state.
    OperationInvalid = 55,
    /// `VIR_ERR_NO_SECRET`: a libvirt secret that does not exist or has no value.
    NoSecret = 66,
    /// `VIR_ERR_CONFIG_UNSUPPORTED`: a configuration the library cannot work with.
    ConfigUnsupported = 67,
    /// `VIR_ERR_OPERATION_ABORTED`: an operation that was cancelled.
    OperationAborted = 78,
    /// `VIR_ERR_NO_DOMAIN_BACKUP`: a backup that does not exist.
    NoDomainBackup = 104,
}

/// libvirt's `VIR_FROM_DOMAIN`: backups are a domain feature, as snapshots are.
pub(crate) const VIR_FROM_DOMAIN: i32 = 20;

/// An error as libvirt reports one: its number, its domain and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// A libvirt `virErrorNumber` (ours, or carried over from a libvirt call).
    pub code: i32,
    /// A libvirt `virErrorDomain`.
    pub domain: i32,
    /// The human-readable message.
    pub message: String,
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with `code`, under `VIR_FROM_DOMAIN`, with `message` as it is.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code: code as i32,
            domain: VIR_FROM_DOMAIN,
            message: message.into(),
        }
    }

    /// Whether the error has `code`.
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == code as i32
    }

    /// A bad argument (`InvalidArg`).
    pub fn invalid_arg(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::InvalidArg,
            format!("invalid argument: {}", message.into()),
        )
    }

    /// Bad XML (`XmlError`).
    pub fn xml(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::XmlError,
            format!("XML error: {}", message.into()),
        )
    }

    /// No backup with this UUID (`NoDomainBackup`).
    pub fn no_backup(uuid: &str) -> Self {
        Self::new(
            ErrorCode::NoDomainBackup,
            format!("Domain backup not found: no domain backup with matching uuid '{uuid}'"),
        )
    }

    /// An operation not valid in the current state (`OperationInvalid`).
    pub fn operation_invalid(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::OperationInvalid,
            format!("Requested operation is not valid: {}", message.into()),
        )
    }

    /// An operation that failed (`OperationFailed`).
    pub fn operation_failed(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::OperationFailed,
            format!("operation failed: {}", message.into()),
        )
    }

    /// An operation that was cancelled (`OperationAborted`).
    pub fn aborted(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::OperationAborted,
            format!("operation aborted: {}", message.into()),
        )
    }

    /// Behaviour that belongs to a later stage of the library: fail loudly.
    pub fn not_supported_yet(what: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::NoSupport,
            format!(
                "this function is not supported by the connection driver: {} is not supported yet",
                what.into()
            ),
        )
    }

    /// Something the library does not support (`NoSupport`).
    pub fn no_support(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::NoSupport,
            format!(
                "this function is not supported by the connection driver: {}",
                message.into()
            ),
        )
    }

    /// A configuration (of the host or of the caller) the library cannot
    /// work with, as libvirt's `VIR_ERR_CONFIG_UNSUPPORTED`.
    pub fn config_unsupported(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::ConfigUnsupported,
            format!("unsupported configuration: {}", message.into()),
        )
    }

    /// A bug or broken invariant in the library (`InternalError`).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::InternalError,
            format!("internal error: {}", message.into()),
        )
    }

    /// An I/O failure on a named file.
    pub fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        Self::operation_failed(format!("{what} '{}': {err}", path.display()))
    }
}

impl From<virt::error::Error> for Error {
    /// A failed libvirt call: keep its code, domain and message.
    fn from(e: virt::error::Error) -> Self {
        Error {
            code: e.code().to_raw() as i32,
            domain: e.domain().to_raw() as i32,
            message: e.message().to_string(),
        }
    }
}

/// Log, as a warning of the calling module, an error the caller can do
/// nothing more about (a clean-up after another failure, a best-effort
/// step), with what was being done: such an error is never dropped
/// unseen (see `logging`).
#[macro_export]
macro_rules! warn_if_err {
    ($result:expr, $($what:tt)+) => {
        if let Err(e) = $result {
            ::log::warn!("{}: {}", format_args!($($what)+), e);
        }
    };
}

/// As `warn_if_err!`, at debug level: for a failure that is often the
/// normal answer (a folder that still holds other files, a file already
/// gone), worth seeing only when asked.
#[macro_export]
macro_rules! debug_if_err {
    ($result:expr, $($what:tt)+) => {
        if let Err(e) = $result {
            ::log::debug!("{}: {}", format_args!($($what)+), e);
        }
    };
}

/// An I/O result where a missing file is no failure (a removal of what
/// may already be gone).
pub(crate) fn missing_ok(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
